"""The audit timeline of real recorded runs (tests/histories/), rendered from the history alone.

The Markdown of the planned failover is compared with tests/golden/failover-planned.md. After a deliberate
change of the report, regenerate it with the command an auditor would run and review the diff:

    .venv/bin/drflow audit export tests/histories/failover-planned.json -o tests/golden/failover-planned.md
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory

from workers.audit.history import read_history_file
from workers.audit.render import render_html, render_json, render_markdown
from workers.audit.timeline import Timeline, build_timeline

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = ROOT / "tests" / "histories"
GOLDEN = ROOT / "tests" / "golden" / "failover-planned.md"
DRFLOW = str(Path(sys.executable).parent / "drflow")

SECRETS = (
    "Sup3r-S3cret-pw",
    "hunter2-inline",
    "tok-0123456789abcdef",
    "eyJhbGciOiJIUzI1NiJ9",
    "c2VjcmV0LXZhbHVlLWJhc2U2NC1ibG9i",
    "xoxb-1234567890-abcdefghij",
)


def timeline_of(name: str) -> Timeline:
    return build_timeline(read_history_file(HISTORIES / f"{name}.json"))


def edit_payload(event: dict[str, Any], attributes: str, field: str, change: Callable[[Any], Any]) -> None:
    """Decode one JSON payload of a history event, change it, encode it again."""
    payload = event[attributes][field]["payloads"][0]
    payload["data"] = base64.b64encode(
        json.dumps(change(json.loads(base64.b64decode(payload["data"])))).encode()
    ).decode()


def history_with_secrets() -> WorkflowHistory:
    """A copy of the planned failover in which activities and people leaked secret values."""
    data = json.loads((HISTORIES / "failover-planned.json").read_text())
    events = {int(e["eventId"]): e for e in data["events"]}

    def runbook(result: dict[str, Any]) -> dict[str, Any]:
        result["runbook"]["notify"] = {
            "slack_bot_token": "xoxb-1234567890-abcdefghij",
            "api_key": "tok-0123456789abcdef",
        }
        return result

    def fence(result: dict[str, Any]) -> dict[str, Any]:
        result["actions"].append("connected to postgresql://drflow:Sup3r-S3cret-pw@127.0.0.1:5432/app")
        result["actions"].append("libpq: host=127.0.0.1 password=hunter2-inline dbname=app")
        return result

    def approval(body: dict[str, Any]) -> dict[str, Any]:
        body["reason"] = (
            "go; Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl "
            'tsig secret "c2VjcmV0LXZhbHVlLWJhc2U2NC1ibG9i"'
        )
        return body

    edit_payload(events[8], "activityTaskCompletedEventAttributes", "result", runbook)
    edit_payload(events[44], "activityTaskCompletedEventAttributes", "result", fence)
    accepted = events[38]["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]
    edit_payload({"a": accepted}, "a", "args", approval)
    return WorkflowHistory.from_json("failover-with-secrets", data)


def test_export_of_a_planned_failover_names_the_approver_dns_change_fence_and_rto() -> None:
    timeline = timeline_of("failover-planned")
    approval = [u for u in timeline.updates if u.name == "approve"]
    assert [(u.by, u.channel, u.reason, u.status) for u in approval] == [("bob", "cli", "go", "completed")]
    (change,) = timeline.evidence.dns_changes
    assert (change.before.values, change.after.values) == (["127.0.1.1"], ["127.0.2.1"])
    (fence,) = timeline.evidence.fences
    assert (fence.region, fence.method, fence.fenced, fence.final_lsn) == (
        "region-a",
        "shutdown",
        True,
        "0/3000028",
    )
    assert timeline.outcome.achieved_rto_seconds == pytest.approx(5.565, abs=0.001)
    assert (timeline.objectives.rto_seconds, timeline.outcome.rto_met) == (120.0, True)
    assert timeline.outcome.zero_loss_proven is True
    assert timeline.request.requested_by == "alice"
    assert [w.sdk for w in timeline.workers] == ["temporal-python 1.35.0"]

    markdown = render_markdown(timeline)
    assert "| 03:25:33.979 | 38 | approve | failover | bob | cli | go |" in markdown
    assert "before 127.0.1.1 (TTL 5s) → after 127.0.2.1 (TTL 5s)" in markdown
    assert "Fence region-a: fenced by shutdown, final LSN 0/3000028" in markdown
    assert "Achieved RTO: 5.6 s against the objective 2m: **met**" in markdown


def test_markdown_of_the_planned_failover_matches_the_golden_file() -> None:
    rendered = render_markdown(timeline_of("failover-planned"))
    assert rendered == GOLDEN.read_text(encoding="utf-8"), (
        "the audit Markdown changed; if deliberate, regenerate with: .venv/bin/drflow audit export "
        "tests/histories/failover-planned.json -o tests/golden/failover-planned.md"
    )


def test_emergency_history_shows_the_data_loss_acceptance_by_carol_with_her_reason() -> None:
    timeline = timeline_of("failover-emergency-data-loss")
    (accepted,) = [u for u in timeline.updates if u.name == "accept_data_loss"]
    assert (accepted.by, accepted.reason, accepted.status) == (
        "carol",
        "staying down costs more",
        "completed",
    )
    assert timeline.outcome.zero_loss_proven is False
    assert timeline.outcome.data_loss_bytes == 1343560
    assert timeline.outcome.rpo_met is False
    markdown = render_markdown(timeline)
    assert "| accept_data_loss | data-loss | carol | ui | staying down costs more |" in markdown
    assert "Data loss (RPO): 1343560 bytes against the objective 1s: **missed**" in markdown


def test_aborted_history_shows_the_operator_decision_and_the_failed_step() -> None:
    timeline = timeline_of("failover-aborted")
    (decision,) = [u for u in timeline.updates if u.name == "decide"]
    assert (decision.decision, decision.by, decision.status) == ("abort", "carol", "completed")
    (failed,) = [a for a in timeline.activities if a.failure is not None]
    assert failed.name == "dns_verify_propagation"
    assert failed.failure is not None and failed.failure.type == "PropagationTimeout"
    assert timeline.outcome.outcome == "aborted"
    markdown = render_markdown(timeline)
    assert "| decide abort | verify propagation | carol | ui |" in markdown
    assert "dns_verify_propagation failed after 1 attempt(s) (PropagationTimeout), not retried" in markdown


def test_readiness_and_lock_histories_render_too() -> None:
    readiness = timeline_of("readiness")
    assert readiness.outcome.verdict == "ready"
    assert "Verdict: **ready**" in render_markdown(readiness)
    lock = timeline_of("failover-planned-lock")
    assert [s.name for s in lock.signals] == ["release"]
    assert "ServiceLock" in render_html(lock)


def test_secrets_injected_into_a_history_are_absent_from_every_rendering() -> None:
    timeline = build_timeline(history_with_secrets())
    assert "Sup3r-S3cret-pw" in str(timeline.model_dump())  # the raw timeline still holds them
    renderings = {
        "md": render_markdown(timeline),
        "json": render_json(timeline),
        "html": render_html(timeline),
    }
    for fmt, text in renderings.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked into the {fmt} rendering"
        assert "[REDACTED]" in text
    # references to where a secret lives are evidence, not secrets: they stay
    assert "file:/tmp/drflow-sandbox-9d6esp3i/sandbox/postgres/password" in renderings["json"]
    assert "postgresql://drflow:[REDACTED]@127.0.0.1:5432/app" in renderings["md"]


def test_cli_export_writes_json_and_html_from_a_history_file(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = subprocess.run(
        [DRFLOW, "audit", "export", str(HISTORIES / "failover-aborted.json"), "--format", "html", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "<td>decide abort</td>" in out.read_text()
    result = subprocess.run(
        [DRFLOW, "audit", "export", str(HISTORIES / "failover-planned.json"), "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["timeline"]["evidence"]["fences"][0]["final_lsn"] == "0/3000028"
    requirements = [row["requirement"] for row in report["regulatory_evidence"]]
    assert requirements[0].startswith("DORA") and "PCI DSS v4.0 12.10.2" in requirements
