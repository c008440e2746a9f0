"""The Readiness verdict, branch by branch, without any server: it is a pure function of observations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from activities.database.results import ReplicationStatus
from activities.dns.reader import DnsReadout, NameserverAnswer
from activities.health import HealthProbeResult
from runbooks.loader import LoadedRunbook, load_runbook_file
from workflows.readiness_report import assess, render_markdown

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sandbox() -> LoadedRunbook:
    return load_runbook_file(ROOT / "runbooks" / "sandbox.yaml")


def probe(region: str, ok: bool = True, error: str | None = None) -> HealthProbeResult:
    return HealthProbeResult(
        region=region,
        check="app-deep",
        url=f"http://{region}/healthz/deep",
        ok=ok,
        status=200 if ok else 503,
        latency_ms=3.0,
        error=None if ok else (error or "status 503, expected 200"),
    )


def answer(
    port: int,
    values: list[str],
    ttl: int = 5,
    error: str | None = None,
    aa: bool = True,
    rcode: str = "NOERROR",
) -> NameserverAnswer:
    name = "ns1.drflow.test." if port == 15353 else "ns2.drflow.test."
    if error is not None:
        return NameserverAnswer(
            name=name, address="127.0.0.1", port=port, values=[], rcode=None, latency_ms=2000, error=error
        )
    return NameserverAnswer(
        name=name,
        address="127.0.0.1",
        port=port,
        values=values,
        ttl=ttl,
        rcode=rcode,
        authoritative=aa,
        latency_ms=1.0,
    )


def readout(*answers: NameserverAnswer) -> DnsReadout:
    return DnsReadout(record="app.drflow.test.", type="A", answers=list(answers), discovered=False)


HEALTHY = [probe("region-a"), probe("region-b")]
GOOD_DNS = readout(answer(15353, ["127.0.1.1"]), answer(15354, ["127.0.1.1"]))


def test_everything_as_the_runbook_says_is_ready(sandbox: LoadedRunbook) -> None:
    report = assess(sandbox, HEALTHY, GOOD_DNS, NOW)
    assert (report.verdict, report.reasons) == ("ready", [])
    assert report.expected_address == "127.0.1.1"
    assert report.budget.ttl_source == "runbook" and report.budget.fits


def test_unhealthy_primary_alone_is_degraded_since_failover_is_still_possible(sandbox: LoadedRunbook) -> None:
    report = assess(sandbox, [probe("region-a", ok=False), probe("region-b")], GOOD_DNS, NOW)
    assert report.verdict == "degraded"
    assert report.reasons == ["primary region-a fails health checks: app-deep (status 503, expected 200)"]


def test_no_healthy_standby_is_not_ready(sandbox: LoadedRunbook) -> None:
    report = assess(sandbox, [probe("region-a"), probe("region-b", ok=False)], GOOD_DNS, NOW)
    assert report.verdict == "not-ready"
    assert report.reasons == [
        "no standby region passes its health checks: a failover would have nowhere to go"
    ]


def test_no_nameserver_answering_is_not_ready(sandbox: LoadedRunbook) -> None:
    dns = readout(
        answer(15353, [], error="timeout after 2.0s"), answer(15354, [], error="timeout after 2.0s")
    )
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.verdict == "not-ready"
    assert report.reasons[0] == "no authoritative nameserver answered for app.drflow.test."
    assert report.reasons[1:] == [
        "nameserver ns1.drflow.test. (127.0.0.1:15353) did not answer: timeout after 2.0s",
        "nameserver ns2.drflow.test. (127.0.0.1:15354) did not answer: timeout after 2.0s",
    ]


def test_nameservers_that_disagree_are_degraded(sandbox: LoadedRunbook) -> None:
    dns = readout(answer(15353, ["127.0.2.1"]), answer(15354, ["127.0.1.1"]))
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.verdict == "degraded"
    assert report.reasons == [
        "nameservers disagree (ns1.drflow.test.: 127.0.2.1; ns2.drflow.test.: 127.0.1.1)"
    ]


def test_missing_record_and_non_authoritative_answer_are_named(sandbox: LoadedRunbook) -> None:
    dns = readout(answer(15353, [], rcode="NXDOMAIN"), answer(15354, ["127.0.1.1"], aa=False))
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.verdict == "degraded"
    assert report.reasons == [
        "nameserver ns1.drflow.test. (127.0.0.1:15353) answers NXDOMAIN with no A record",
        "nameserver ns2.drflow.test. (127.0.0.1:15354) is not authoritative for app.drflow.test.",
    ]


def test_served_ttl_longer_than_the_runbooks_is_used_for_the_budget(sandbox: LoadedRunbook) -> None:
    dns = readout(answer(15353, ["127.0.1.1"], ttl=30), answer(15354, ["127.0.1.1"], ttl=30))
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.verdict == "degraded"
    assert report.budget.ttl_seconds == 30 and report.budget.ttl_source == "observed" and report.budget.fits
    assert report.reasons == ["nameservers serve TTL 30s, the runbook says 5s"]


def test_served_ttl_that_breaks_the_rto_is_not_ready(sandbox: LoadedRunbook) -> None:
    dns = readout(answer(15353, ["127.0.1.1"], ttl=3600), answer(15354, ["127.0.1.1"], ttl=3600))
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.verdict == "not-ready"
    assert report.reasons[0] == (
        "TTL 1h + propagation budget 20s + health-check minimum 2s = 1h22s exceeds the RTO of 2m"
    )


def test_markdown_report_shows_verdict_health_dns_and_budget(sandbox: LoadedRunbook) -> None:
    text = render_markdown(assess(sandbox, [probe("region-a"), probe("region-b", ok=False)], GOOD_DNS, NOW))
    assert text.splitlines()[0] == "## Readiness of sandbox-app: NOT READY"
    assert "Checked 2026-11-26 09:00:00 UTC against" in text
    assert "| region-b | standby | app-deep | FAIL: status 503, expected 200 | 503 | 3 ms |" in text
    assert "| ns1.drflow.test. 127.0.0.1:15353 | 127.0.1.1 | 5 | yes | 1 ms |" in text
    assert text.endswith("TTL 5s (runbook) + propagation 20s + health minimum 2s = 27s fits within RTO 2m")


def replication(**changes: object) -> ReplicationStatus:
    base: dict[str, object] = {
        "primary_region": "region-a", "standby_region": "region-b", "primary_reachable": True,
        "primary_in_recovery": False, "primary_lsn": "0/3000100", "standby_reachable": True,
        "standby_in_recovery": True, "standby_receive_lsn": "0/3000100", "standby_replay_lsn": "0/3000100",
        "replay_paused": False, "lag_bytes": 0, "lag_seconds": 0.0, "errors": [],
    }  # fmt: skip
    return ReplicationStatus.model_validate({**base, **changes})


def test_streaming_standby_within_the_rpo_is_ready(sandbox: LoadedRunbook) -> None:
    report = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [replication()])
    assert (report.verdict, report.reasons) == ("ready", [])
    assert "| region-a → region-b | 0 bytes / 0.0s | no | yes |" in render_markdown(report)


def test_lag_above_the_rpo_and_paused_replay_are_degraded(sandbox: LoadedRunbook) -> None:
    report = assess(
        sandbox, HEALTHY, GOOD_DNS, NOW, [replication(replay_paused=True, lag_bytes=81920, lag_seconds=7.25)]
    )
    assert report.verdict == "degraded"
    assert report.reasons == [
        "WAL replay is paused on region-b: its lag grows while writes continue",
        "replication lag region-a → region-b is 7.2s (81920 bytes), above the RPO of 5s",
    ]


def test_unreachable_standby_database_is_not_ready(sandbox: LoadedRunbook) -> None:
    status = replication(
        standby_reachable=False, standby_in_recovery=None, errors=["region-b: connection refused"]
    )
    report = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [status])
    assert report.verdict == "not-ready"
    assert report.reasons == ["the region-b database cannot be reached: region-b: connection refused"]


def test_two_writable_databases_are_split_brain_and_not_ready(sandbox: LoadedRunbook) -> None:
    report = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [replication(standby_in_recovery=False)])
    assert report.verdict == "not-ready"
    assert report.reasons == ["both region-a and region-b databases accept writes (split brain)"]


def test_lag_past_half_the_rpo_is_an_early_warning_while_the_verdict_stays_ready(
    sandbox: LoadedRunbook,
) -> None:
    report = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [replication(lag_seconds=3.0, lag_bytes=4096)])
    assert (report.verdict, report.reasons) == ("ready", [])
    assert [(w.code, w.message) for w in report.warnings] == [
        ("lag-near-rpo", "replication lag region-a → region-b is 3.0s, 60% of the RPO of 5s (warns from 50%)")
    ]
    text = render_markdown(report)
    assert text.splitlines()[0] == "## Readiness of sandbox-app: READY (1 early warning)"
    assert "### Early warnings\n- replication lag region-a → region-b is 3.0s, 60% of the RPO" in text
    assert "warnings" in report.model_dump(mode="json")


def test_no_early_warning_below_the_fraction_nor_once_the_objective_is_broken(sandbox: LoadedRunbook) -> None:
    calm = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [replication(lag_seconds=2.0)])
    assert calm.warnings == [] and "warnings" not in calm.model_dump(mode="json")  # old readers decode it
    broken = assess(sandbox, HEALTHY, GOOD_DNS, NOW, [replication(lag_seconds=7.0)])
    assert broken.warnings == [] and broken.verdict == "degraded"  # a reason now, not a warning


def test_the_runbook_sets_the_fraction_and_rpo_bytes_warns_too(sandbox: LoadedRunbook) -> None:
    objectives = sandbox.runbook.objectives.model_copy(update={"warn_at": 0.9, "rpo_bytes": 10_000})
    runbook = sandbox.runbook.model_copy(update={"objectives": objectives})
    loaded = sandbox.model_copy(update={"runbook": runbook})
    report = assess(loaded, HEALTHY, GOOD_DNS, NOW, [replication(lag_seconds=3.0, lag_bytes=9_500)])
    assert [w.code for w in report.warnings] == ["lag-bytes-near-rpo"]
    assert "9500 bytes, 95% of rpo_bytes 10000 (warns from 90%)" in report.warnings[0].message
    assert "warn_at" not in sandbox.runbook.objectives.model_dump(mode="json")  # unset: not written


def test_a_cutover_budget_past_half_the_rto_is_an_early_warning(sandbox: LoadedRunbook) -> None:
    dns = readout(answer(15353, ["127.0.1.1"], ttl=60), answer(15354, ["127.0.1.1"], ttl=60))
    report = assess(sandbox, HEALTHY, dns, NOW)
    assert report.budget.fits
    assert [w.code for w in report.warnings] == ["budget-near-rto"]
    assert report.warnings[0].message.startswith(
        "the cutover budget 1m22s (TTL 60s + propagation 20s + health minimum 2s) is 68% of the RTO of 2m"
    )
