"""The people file: who may approve, by which SSH keys and Slack ids, in which groups.

Today an approver is whatever string the caller types. ``people.yaml`` (in the runbooks directory) turns a
name into a verifiable person: the OpenSSH public keys that may sign their decisions (the lines of git's
``allowed_signers``), the Slack user ids the gateway may attest for them, and the groups a gate can require.
It is pure data, validated here once, so the workflow's Update validators only look things up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import AfterValidator, Field, ValidationError, model_validator

from runbooks.loader import (
    PEOPLE_FILE,
    Problem,
    RunbookError,
    load_yaml_mapping,
    plain,
    runbooks_dir,
    validation_problems,
)
from runbooks.model import Approvals, Name, StrictModel, raise_rule_problems

# Written by `drflow sandbox up` into the keys/ folder beside its people file: the private keys there are demo
# keys, and the CLI signs with one only when this marker says so (workers/cli/signing.py).
DEMO_MARKER = ".drflow-demo-keys"
FINGERPRINT_PATTERN = r"^SHA256:[A-Za-z0-9+/]{43}$"
SLACK_ID_PATTERN = r"^[UW][A-Z0-9]{2,}$"
MIN_RSA_BITS = 2048

Fingerprint = Annotated[
    str, Field(pattern=FINGERPRINT_PATTERN, description="as `ssh-keygen -lf` prints it: SHA256:<base64>")
]
SlackId = Annotated[str, Field(pattern=SLACK_ID_PATTERN, description="a Slack user id such as U02BOB")]

RuleProblem = tuple[tuple[str | int, ...], str]


def key_blob(line: str) -> bytes:
    """The SSH wire encoding of a public key line: what fingerprints hash and SSHSIG blobs embed."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64> [comment]', as in an allowed_signers or .pub file")
    try:
        return base64.b64decode(parts[1], validate=True)
    except binascii.Error as err:
        raise ValueError(f"the key is not valid base64: {err}") from err


def fingerprint_of_blob(blob: bytes) -> str:
    """``SHA256:`` and unpadded base64 of the blob's digest, exactly as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(line: str) -> str:
    return fingerprint_of_blob(key_blob(line))


def _public_key_line(value: str) -> str:
    """Parse with ``cryptography`` so a typo fails when the file is checked, not when someone signs."""
    line = " ".join(value.split())
    key_blob(line)
    try:
        key = load_ssh_public_key(line.encode())
    except (ValueError, TypeError) as err:
        raise ValueError(f"not an OpenSSH public key: {err}") from err
    except UnsupportedAlgorithm as err:
        raise ValueError(f"unsupported public key: {err}") from err
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(
            "only ssh-ed25519, ssh-rsa (signing with rsa-sha2-*) and ecdsa-sha2-* keys are allowed"
        )
    return line


def _ed25519_line(value: str) -> str:
    """Gateways and archive keys sign in-process with Ed25519 only (``attestations.Ed25519Signer``)."""
    line = _public_key_line(value)
    if not line.startswith("ssh-ed25519 "):
        raise ValueError("a gateway key is an ssh-ed25519 public key")
    return line


PublicKeyLine = Annotated[
    str,
    AfterValidator(_public_key_line),
    Field(description="an OpenSSH public key line: 'ssh-ed25519 AAAA... comment', as in allowed_signers"),
]
Ed25519KeyLine = Annotated[
    str, AfterValidator(_ed25519_line), Field(description="an ssh-ed25519 OpenSSH public key line")
]


class Person(StrictModel):
    name: Name = Field(description="the id approvals name: lowercase letters, digits and dashes")
    display_name: str | None = Field(default=None, min_length=1, description="shown in reports and Slack")
    keys: list[PublicKeyLine] = Field(
        default_factory=list, description="public keys that may sign this person's decisions"
    )
    revoked_keys: list[Fingerprint] = Field(
        default_factory=list,
        description="fingerprints no longer accepted; the key line may stay in keys, for the record",
    )
    slack: list[SlackId] = Field(default_factory=list, description="Slack user ids of this person")
    groups: list[Name] = Field(default_factory=list, description="groups a gate can require, e.g. dba")

    def fingerprints(self) -> dict[str, str]:
        """Fingerprint to key line, revoked keys included (the verifier needs to say 'revoked')."""
        return {fingerprint(line): line for line in self.keys}


class Gateway(StrictModel):
    """A Slack gateway whose attestations ("Slack user U.. clicked approve") the workflows trust."""

    name: Name
    key: Ed25519KeyLine


class ArchiveKey(StrictModel):
    """A worker key whose signature on an archive's manifest ``drflow audit verify`` trusts."""

    name: Name
    key: Ed25519KeyLine


class People(StrictModel):
    people: list[Person] = Field(description="everyone who may approve or decide")
    gateways: list[Gateway] = Field(default_factory=list, description="trusted Slack gateways")
    archive_keys: list[ArchiveKey] = Field(
        default_factory=list,
        description="worker keys trusted to sign archive manifests; when set, unsigned archives fail verify",
    )

    @model_validator(mode="after")
    def _rules(self) -> People:
        raise_rule_problems("people_rules", people_problems(self))
        return self

    def person(self, name: str) -> Person:
        for person in self.people:
            if person.name == name:
                return person
        raise UnknownApproverError(name, self)

    def person_for_slack(self, slack_id: str) -> Person | None:
        """The one person with this Slack id (the file guarantees at most one), or None."""
        return next((p for p in self.people if slack_id in p.slack), None)

    def groups(self) -> set[str]:
        return {g for p in self.people for g in p.groups}

    def members(self, group: str) -> set[str]:
        """Names of the people in a group; an unknown group is an error, not an empty quorum."""
        found = {p.name for p in self.people if group in p.groups}
        if not found:
            raise UnknownApproverError(group, self)
        return found

    def resolve(self, name_or_group: str) -> set[str]:
        """A person's name or a group's, as a gate's approvers list may say, to the people's names."""
        if any(p.name == name_or_group for p in self.people):
            return {name_or_group}
        return self.members(name_or_group)

    def key_allowed(self, person: str, key_fingerprint: str) -> bool:
        """Whether this key may sign for this person now: listed for them and not revoked."""
        who = self.person(person)
        return key_fingerprint in who.fingerprints() and key_fingerprint not in who.revoked_keys

    def gateway_for(self, key_fingerprint: str) -> Gateway | None:
        return next((g for g in self.gateways if fingerprint(g.key) == key_fingerprint), None)

    def archive_key_for(self, key_fingerprint: str) -> ArchiveKey | None:
        return next((k for k in self.archive_keys if fingerprint(k.key) == key_fingerprint), None)

    def allowed_signers(self) -> str:
        """The file ``ssh-keygen -Y verify -f`` reads, so anyone can check a decision without drflow."""
        lines = [
            f'{p.name} namespaces="drflow-approval,drflow-request" {line}'
            for p in self.people
            for line in p.keys
            if fingerprint(line) not in p.revoked_keys
        ]
        lines += [f'gateway:{g.name} namespaces="drflow-slack-attestation" {g.key}' for g in self.gateways]
        lines += [f'archive:{k.name} namespaces="drflow-archive" {k.key}' for k in self.archive_keys]
        return "".join(f"{line}\n" for line in lines)

    def identify(self, claim: str) -> Person | None:
        """The person an unverified name or Slack id stands for: names compare without letter case."""
        if re.fullmatch(SLACK_ID_PATTERN, claim):
            return self.person_for_slack(claim)
        wanted = claim.strip().casefold()
        return next((p for p in self.people if p.name == wanted), None)


class PeopleFileError(RunbookError):
    """The people file could not be loaded; ``problems`` says where, as for a runbook."""


class UnknownApproverError(KeyError):
    """Neither a person nor a group of the people file: a typo must not become an empty approvers set."""

    def __init__(self, name: str, people: People) -> None:
        known = sorted({p.name for p in people.people} | people.groups())
        super().__init__(f"{name!r} is neither a person nor a group in the people file; known: {known}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


def people_problems(people: People) -> list[RuleProblem]:
    """Rules across people, each reported at the entry it is about, naming the other party."""
    problems: list[RuleProblem] = []
    names: dict[str, int] = {}
    slack_owner: dict[str, str] = {}
    key_owner: dict[str, str] = {}
    for i, person in enumerate(people.people):
        where: tuple[str | int, ...] = ("people", i)
        if person.name in names:
            problems.append(((*where, "name"), f"{person.name!r} is already people[{names[person.name]}]"))
        names.setdefault(person.name, i)
        for j, slack_id in enumerate(person.slack):
            owner = slack_owner.setdefault(slack_id, person.name)
            if owner != person.name:
                problems.append(
                    ((*where, "slack", j), f"Slack id {slack_id} is both {owner!r} and {person.name!r}")
                )
        for j, line in enumerate(person.keys):
            fp = fingerprint(line)
            owner = key_owner.setdefault(fp, person.name)
            if owner != person.name:
                problems.append(
                    ((*where, "keys", j), f"key {fp} is listed for both {owner!r} and {person.name!r}")
                )
    for i, person in enumerate(people.people):
        for j, group in enumerate(person.groups):
            if group in names:
                problems.append(
                    (
                        ("people", i, "groups", j),
                        f"group {group!r} is also a person's name: resolve() would be ambiguous",
                    )
                )
    gateway_names: set[str] = set()
    for i, gateway in enumerate(people.gateways):
        if gateway.name in gateway_names:
            problems.append((("gateways", i, "name"), f"gateway {gateway.name!r} is listed twice"))
        gateway_names.add(gateway.name)
        fp = fingerprint(gateway.key)
        if fp in key_owner:
            message = f"key {fp} is also listed for {key_owner[fp]!r}: a gateway has its own key"
            problems.append((("gateways", i, "key"), message))
        key_owner.setdefault(fp, f"gateway {gateway.name}")
    archive_names: set[str] = set()
    for i, archive_key in enumerate(people.archive_keys):
        if archive_key.name in archive_names:
            message = f"archive key {archive_key.name!r} is listed twice"
            problems.append((("archive_keys", i, "name"), message))
        archive_names.add(archive_key.name)
        fp = fingerprint(archive_key.key)
        if fp in key_owner:
            message = f"key {fp} is also listed for {key_owner[fp]!r}: an archive key is the worker's own"
            problems.append((("archive_keys", i, "key"), message))
        key_owner.setdefault(fp, f"archive key {archive_key.name}")
    return problems


def people_path(directory: str | os.PathLike[str] | None = None) -> Path:
    return runbooks_dir(directory) / PEOPLE_FILE


def load_people_file(path: str | os.PathLike[str]) -> People:
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise PeopleFileError([Problem(str(file), None, "", f"cannot read: {err.strerror or err}")]) from err
    return parse_people(raw, str(file))


def parse_people(raw: bytes, source: str) -> People:
    """Validate a people file; problems are ``file:line: people[1].slack[0]: message``, as for runbooks."""
    document = load_yaml_mapping(raw, source, "a people file is a YAML mapping with people: [...]")
    try:
        return People.model_validate(plain(document))
    except ValidationError as err:
        raise PeopleFileError(validation_problems(err, document, source, "docs/approvals.md")) from err


class PeopleSnapshot(StrictModel):
    """The people file as one gate saw it: the content and its digest, pinned in the run's history."""

    people: People
    source: str
    sha256: str


def people_location(approvals: Approvals, directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The runbook's own ``approvals.people``, else ``people.yaml`` of the runbooks directory if present."""
    if approvals.people is not None:
        return Path(approvals.people)
    default = people_path(directory)
    return default if default.is_file() else None


def people_for(
    service: str, approvals: Approvals, directory: str | os.PathLike[str] | None = None
) -> PeopleSnapshot | None:
    """The people file a service's approvals use, checked against them; None when they use none."""
    location = people_location(approvals, directory)
    if location is None:
        needs = [f"approvals.{name}" for name in ("quorum", "unsigned", "unverified_requester")
                 if getattr(approvals, name)]  # fmt: skip
        if needs:
            where = people_path(directory)
            raise PeopleFileError(
                [Problem(str(where), None, f"{service}: approvals",
                         f"{', '.join(needs)} need a people file, and there is none ({where})")]
            )  # fmt: skip
        return None
    try:
        raw = location.read_bytes()
    except OSError as err:
        raise PeopleFileError(
            [Problem(str(location), None, "", f"cannot read: {err.strerror or err}")]
        ) from err
    people = parse_people(raw, str(location))
    problems = approver_problems(approvals, people)
    if problems:
        raise PeopleFileError([Problem(str(location), None, f"{service}: approvals", p) for p in problems])
    return PeopleSnapshot(people=people, source=str(location), sha256=hashlib.sha256(raw).hexdigest())


def approver_problems(approvals: Approvals, people: People) -> list[str]:
    """What a runbook's approvals name must exist in the people file, and each quorum must be reachable."""
    problems: list[str] = []
    allowed: set[str] = set()
    for name in approvals.approvers:
        try:
            allowed |= people.resolve(name)
        except UnknownApproverError as err:
            problems.append(f"approver {err}")
    slack = approvals.slack
    if slack is not None:
        for user in slack.approvers:
            person = people.person_for_slack(user)
            if person is None:
                problems.append(
                    f"Slack approver {user} is no person of the people file (add it to their slack)"
                )
            else:
                allowed.add(person.name)
        if slack.identities:
            problems.append(
                "slack.identities is replaced by the people file's slack ids: remove it from the runbook"
            )
    for gate, rule in approvals.quorum.items():
        for group in rule.groups:
            if group not in people.groups():
                problems.append(f"quorum of {gate}: group {group!r} is not in the people file")
        reachable = len(allowed) + (1000 if slack is not None and slack.usergroup else 0)
        if rule.min_approvals > reachable:
            problems.append(
                f"quorum of {gate}: {rule.min_approvals} approvals needed but only {len(allowed)} approvers"
            )
    return problems


def people_schema() -> dict[str, Any]:
    """The JSON Schema of the people file (``docs/people.schema.json``), for editors and CI checks."""
    return People.model_json_schema()


__all__ = [
    "PEOPLE_FILE",
    "ArchiveKey",
    "Gateway",
    "People",
    "PeopleFileError",
    "PeopleSnapshot",
    "Person",
    "UnknownApproverError",
    "fingerprint",
    "load_people_file",
    "parse_people",
    "people_schema",
]
