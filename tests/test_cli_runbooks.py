"""`drflow runbook validate|schema` as an operator runs them: real processes, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_runbook_model import VALID

ROOT = Path(__file__).resolve().parent.parent
DRFLOW = [str(Path(sys.executable).parent / "drflow")]


def drflow(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DRFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_validate_prints_one_summary_line_per_valid_runbook() -> None:
    result = drflow("runbook", "validate", "runbooks/sandbox.yaml", "runbooks/examples/aws.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "runbooks/sandbox.yaml: sandbox-app ok: region-a -> region-b; rfc2136 app.drflow.test. TTL 5s; postgres; "
        "RTO 2m (cutover budget 27s), RPO 5s; 2 health checks",
        "runbooks/examples/aws.yaml: checkout ok: us-east-1 -> us-west-2; route53 checkout.example.com. TTL 30s; "
        "aurora-global; RTO 5m (cutover budget 2m10s), RPO 30s; 2 health checks",
    ]
    assert result.stderr == ""


def test_validate_lists_every_problem_with_file_and_line_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        VALID.replace("  rto: 5m", "  rto: 5 minutes").replace("provider: route53", "provider: bind")
    )
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    result = drflow("runbook", "validate", str(good), str(bad), str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: checkout ok:")
    assert result.stderr.splitlines() == [
        f"{bad}:3: objectives.rto: invalid duration '5 minutes': use a number with a unit, e.g. 30s, 5m, 1h30m, 250ms",
        f"{bad}:12: dns.provider: unknown provider 'bind'; expected one of 'route53', 'clouddns', 'rfc2136'",
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory",
    ]


def test_validate_refuses_two_files_for_one_service(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(VALID)
    result = drflow("runbook", "validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"{tmp_path / 'b.yaml'}: service: 'checkout' is also described by {tmp_path / 'a.yaml'}"
    )


def test_schema_command_output_is_the_committed_schema() -> None:
    result = drflow("runbook", "schema")
    assert result.returncode == 0
    committed = (ROOT / "docs" / "runbook.schema.json").read_text()
    assert result.stdout == committed, "docs/runbook.schema.json is stale: run `make schema`"
    schema = json.loads(result.stdout)
    assert schema["title"] == "Runbook"
    assert {"service", "objectives", "primary", "regions", "dns", "health", "approvals"} <= set(
        schema["required"]
    )


def test_usage_error_exits_2_with_a_hint() -> None:
    result = drflow("check")
    assert result.returncode == 2
    assert "name one SERVICE or pass --all" in result.stderr
