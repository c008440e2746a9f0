"""Load runbooks from YAML with problems that name the file, the line and the field path.

An operator fixing a runbook during an incident needs ``runbooks/checkout.yaml:14: dns.ttl: ...``, not a
pydantic traceback.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from runbooks.model import Runbook, admission_problems

DEFAULT_RUNBOOKS_DIR = "runbooks"
RUNBOOKS_ENV = "DRFLOW_RUNBOOKS"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class RunbookError(Exception):
    """A runbook could not be loaded; ``problems`` has one entry per thing to fix."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class UnknownServiceError(RunbookError):
    def __init__(self, service: str, directory: Path, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none"
        super().__init__(
            [
                Problem(
                    str(directory),
                    None,
                    "",
                    f"unknown service {service!r}; runbooks there describe: {listing}",
                )
            ]
        )
        self.service = service


class LoadedRunbook(BaseModel):
    """A validated runbook plus where it came from; its digest identifies the version in reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runbook: Runbook
    source: str
    sha256: str


PEOPLE_FILE = "people.yaml"


def runbooks_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(RUNBOOKS_ENV) or DEFAULT_RUNBOOKS_DIR)


def load_runbook_file(path: str | os.PathLike[str]) -> LoadedRunbook:
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise RunbookError([Problem(str(file), None, "", f"cannot read: {err.strerror or err}")]) from err
    return _parsed(raw, str(file))


@functools.lru_cache(maxsize=1024)
def _parsed(raw: bytes, source: str) -> LoadedRunbook:
    """``parse_runbook``, once per content: every run reads the whole directory (a service is found by
    the name inside its file, and two files naming one service are refused), and parsing is the costly
    part, 14 ms a runbook here: 50 runbooks cost each run 0.7 s of CPU before this. The result depends
    on the bytes and the path alone, and is immutable, so an edited file is simply parsed anew."""
    return parse_runbook(raw, source)


def parse_runbook(raw: bytes, source: str) -> LoadedRunbook:
    document = load_yaml_mapping(raw, source, "a runbook is a YAML mapping with service, regions, dns, ...")
    try:
        runbook = Runbook.model_validate(plain(document))
    except ValidationError as err:
        raise RunbookError(validation_problems(err, document, source)) from err
    admission = admission_problems(runbook)
    if admission:
        raise RunbookError([locate(document, loc, message, source) for loc, message in admission])
    return LoadedRunbook(runbook=runbook, source=source, sha256=hashlib.sha256(raw).hexdigest())


def load_directory(directory: str | os.PathLike[str]) -> tuple[list[LoadedRunbook], list[Problem]]:
    """Every ``*.yaml`` directly in the directory (examples in subfolders are not services)."""
    folder = Path(directory)
    if not folder.is_dir():
        return [], [Problem(str(folder), None, "", "runbooks directory does not exist")]
    loaded: list[LoadedRunbook] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for file in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        if file.name == PEOPLE_FILE:  # the people file sits beside the runbooks and is not a service
            continue
        try:
            item = load_runbook_file(file)
        except RunbookError as err:
            problems.extend(err.problems)
            continue
        service = item.runbook.service
        if service in seen:
            problems.append(
                Problem(str(file), None, "service", f"{service!r} is also described by {seen[service]}")
            )
            continue
        seen[service] = str(file)
        loaded.append(item)
    return loaded, problems


def find_runbook(service: str, directory: str | os.PathLike[str] | None = None) -> LoadedRunbook:
    folder = runbooks_dir(directory)
    loaded, problems = load_directory(folder)
    for item in loaded:
        if item.runbook.service == service:
            return item
    broken = [p for p in problems if p.file.endswith((f"{service}.yaml", f"{service}.yml"))]
    if broken:
        raise RunbookError(broken)
    raise UnknownServiceError(service, folder, sorted(i.runbook.service for i in loaded))


def load_yaml_mapping(raw: bytes, source: str, expected: str) -> CommentedMap:
    """Parse YAML keeping line numbers (round-trip mode), so later problems can name the line."""
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(raw)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(part) for part in (err.context, err.problem) if part)
        raise RunbookError([Problem(source, line, "", f"YAML syntax error: {message}")]) from err
    except YAMLError as err:
        raise RunbookError([Problem(source, None, "", f"YAML error: {err}")]) from err
    if not isinstance(document, CommentedMap):
        raise RunbookError([Problem(source, 1, "", expected)])
    return document


def plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


# Cross-field rule errors carry ``ctx["problems"]``: (location, message) pairs, one per field to fix.
RULE_ERROR_TYPES = frozenset({"runbook_rules", "people_rules"})


def validation_problems(
    err: ValidationError, document: CommentedMap, source: str, docs: str = "docs/runbook.md"
) -> list[Problem]:
    problems: list[Problem] = []
    for item in err.errors(include_url=False):
        ctx = item.get("ctx") or {}
        if item["type"] in RULE_ERROR_TYPES and "problems" in ctx:
            for loc, message in ctx["problems"]:
                problems.append(locate(document, tuple(loc), message, source))
            continue
        loc = tuple(item["loc"])
        if item["type"] == "union_tag_invalid":
            loc = (*loc, "provider")
        problems.append(locate(document, loc, _message(item, docs), source))
    return problems


def _message(item: Any, docs: str) -> str:
    message = str(item["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if item["type"] == "extra_forbidden":
        return f"unknown field (check the spelling; see {docs})"
    if item["type"] == "union_tag_invalid":
        ctx = item.get("ctx", {})
        return f"unknown provider {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags', '')}"
    if item["type"] == "missing":
        return "required field is missing"
    return message


def locate(document: CommentedMap, loc: tuple[Any, ...], message: str, source: str) -> Problem:
    """Walk the error location through the YAML, skipping the union tags pydantic adds to it."""
    node: Any = document
    line: int | None = 1
    path: list[str] = []
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
            path.append(str(part))
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
            path.append(f"[{part}]")
        elif isinstance(node, CommentedMap) and isinstance(part, str) and part not in _union_tags(node):
            path.append(part)  # a missing field: report it under its parent's line
            node = None
        elif node is None and isinstance(part, (str, int)):
            path.append(str(part) if isinstance(part, str) else f"[{part}]")  # inside the missing field
        # else: a tag such as 'route53' or 'function-after[...]' that is not in the document
    return Problem(source, line, ".".join(path).replace(".[", "["), message)


def _union_tags(node: CommentedMap) -> set[str]:
    provider = node.get("provider")
    return {str(provider)} if provider is not None else set()
