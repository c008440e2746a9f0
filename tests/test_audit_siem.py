"""SIEM export: every line of a real export, signed approvals included, validates against the committed
JSON Schema, and that schema is the one the code generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tests.test_audit_signatures import Run, drflow, run  # noqa: F401  (run is a module fixture)
from workers.audit.archive import ArchiveConfig, archive_history
from workers.audit.siem import event_schema

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "audit-event.schema.json"


def validated(text: str) -> list[dict[str, Any]]:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    lines = text.splitlines()
    events = [json.loads(line) for line in lines]
    for line, event in zip(lines, events, strict=True):
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, f"{line}: {errors}"
    return events


def test_the_committed_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA.read_text()) == event_schema()


def test_every_line_of_an_archived_signed_run_validates_and_names_each_approver(run: Run, tmp_path: Path) -> None:  # noqa: F811
    result = archive_history(run.history, "failover", ArchiveConfig(location=str(tmp_path)))
    exported = drflow("audit", "export", result.location, "--format", "ndjson")
    assert exported.returncode == 0, exported.stderr
    events = validated(exported.stdout)
    assert events[0]["action"] == "run.start" and events[-1]["action"] == "run.close"
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["schema_version"] for e in events} == {"1"}
    approvals = {e["approval"]["person"]: e for e in events if e["approval"]}
    assert set(approvals) == {"bob", "dave", "carol"}
    for person in ("bob", "carol"):
        answer = approvals[person]["approval"]
        assert answer["identity"] == "ssh-key"
        assert answer["key_fingerprint"] == run.keys[person].fingerprint
    assert approvals["dave"]["approval"]["identity"] == "unverified"
    assert approvals["carol"]["action"] == "update.reject" and approvals["carol"]["actor"]["id"] == "carol"


def test_a_stored_history_exports_valid_lines(tmp_path: Path) -> None:
    exported = drflow("audit", "export", "tests/histories/failover-emergency-data-loss.json", "--format", "ndjson")
    assert exported.returncode == 0, exported.stderr
    actions = [e["action"] for e in validated(exported.stdout)]
    assert "update.accept_data_loss" in actions
