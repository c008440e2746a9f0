"""The runbook contract: what validates, and the exact line an operator gets for what does not."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from runbooks.durations import format_duration, parse_duration
from runbooks.loader import RunbookError, UnknownServiceError, find_runbook, load_directory, load_runbook_file
from runbooks.model import Runbook

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted([*ROOT.glob("runbooks/*.yaml"), *ROOT.glob("runbooks/examples/*.yaml")])

VALID = """\
service: checkout
objectives:
  rto: 5m
  rpo: 30s
primary: us-east-1
regions:
  us-east-1:
    address: 203.0.113.10
  us-west-2:
    address: 198.51.100.20
dns:
  provider: route53
  hosted_zone_id: Z0123456789ABCDEFGHIJ
  zone: example.com.
  record: checkout.example.com.
  ttl: 30
health:
  - name: deep
    http:
      url: "https://{region}.checkout.example.com/healthz"
approvals:
  approvers: [alice, bob]
"""


def problems_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "checkout.yaml"
    path.write_text(text)
    with pytest.raises(RunbookError) as caught:
        load_runbook_file(path)
    return [str(p).replace(str(path), "FILE") for p in caught.value.problems]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_runbook_is_valid(path: Path) -> None:
    loaded = load_runbook_file(path)
    assert loaded.runbook.cutover_budget <= loaded.runbook.objectives.rto
    assert len(loaded.sha256) == 64


def test_valid_runbook_round_trips_through_json_as_temporal_sends_it(tmp_path: Path) -> None:
    path = tmp_path / "checkout.yaml"
    path.write_text(VALID)
    runbook = load_runbook_file(path).runbook
    dumped = runbook.model_dump(mode="json")
    assert dumped["objectives"] == {"rto": "5m", "rpo": "30s"}
    assert Runbook.model_validate(json.loads(json.dumps(dumped))) == runbook


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  rto: 5m",
            "  rto: 5 minutes",
            "FILE:3: objectives.rto: invalid duration '5 minutes': use a number with a unit, e.g. 30s, 5m, 1h30m, 250ms",
        ),
        (
            "  provider: route53",
            "  provider: route54",
            "FILE:12: dns.provider: unknown provider 'route54'; expected one of 'route53', 'clouddns', 'rfc2136'",
        ),
        (
            "  hosted_zone_id: Z0123456789ABCDEFGHIJ\n",
            "",
            "FILE:11: dns.hosted_zone_id: required field is missing",
        ),
        (
            "  ttl: 30",
            "  ttl: 300",
            "FILE:16: dns.ttl: TTL 5m + propagation budget 1m + health-check minimum 10s = 6m10s exceeds the RTO of 5m",
        ),
        (
            "https://{region}.checkout",
            "{region}.checkout",
            "FILE:20: health[0].http.url: '{region}.checkout.example.com/healthz' has no scheme and host; "
            "write it as http://host/path or https://...",
        ),
        (
            "primary: us-east-1",
            "primary: eu-west-1",
            "FILE:5: primary: 'eu-west-1' is not one of the regions (us-east-1, us-west-2)",
        ),
        (
            "    address: 198.51.100.20",
            "    address: 2001:db8::1",
            "FILE:10: regions.us-west-2.address: 2001:db8::1 is IPv6, which does not fit an A record",
        ),
        (
            "  record: checkout.example.com.",
            "  record: checkout.example.org.",
            "FILE:15: dns.record: checkout.example.org. is not inside the zone example.com.",
        ),
        (
            "  record: checkout.example.com.",
            "  record: checkout.example.com",
            "FILE:15: dns.record: 'checkout.example.com' must be fully qualified, ending with a dot: "
            "checkout.example.com.",
        ),
        (
            "  approvers: [alice, bob]",
            "  approvers: []",
            "FILE:22: approvals.approvers: gates are configured but nobody may approve them",
        ),
        (
            "  approvers: [alice, bob]",
            "  approvers: [alice]\n  skip_in_emergency: [data-loss]",
            "FILE:23: approvals.skip_in_emergency: the data-loss gate can never be skipped: accepting data loss "
            "needs a recorded decision",
        ),
        (
            "  ttl: 30",
            "  ttl: 30\n  tsig_secret: hunter2",
            "FILE:17: dns.tsig_secret: unknown field (check the spelling; see docs/runbook.md)",
        ),
        (
            "{region}.checkout.example.com/healthz",
            "{zone}.checkout.example.com/healthz",
            "FILE:20: health[0].http.url: placeholder {zone} is neither region nor address nor in every region's vars",
        ),
        (
            '      url: "https://{region}.checkout.example.com/healthz"',
            '      url: "https://{region}.checkout.example.com/healthz"\n    timeout: 0s\n    interval: 0s',
            "FILE:21: health[0].timeout: must be longer than 0s: no answer could ever pass",
        ),
    ],
    ids=[
        "duration-in-words",
        "unknown-provider",
        "provider-field-missing",
        "ttl-exceeds-rto",
        "url-without-scheme",
        "unknown-primary",
        "ipv6-for-a-record",
        "record-outside-zone",
        "record-not-fqdn",
        "no-approvers",
        "data-loss-gate-skipped",
        "unknown-field",
        "unknown-url-placeholder",
        "zero-health-timeout",
    ],
)
def test_invalid_runbook_gets_one_line_naming_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in VALID
    assert problems_for(tmp_path, VALID.replace(old, new, 1)) == [expected]


def test_inline_secret_is_refused_and_reference_is_accepted(tmp_path: Path) -> None:
    rfc2136 = VALID.replace(
        "  provider: route53\n  hosted_zone_id: Z0123456789ABCDEFGHIJ\n",
        "  provider: rfc2136\n  server: {name: ns1., address: 127.0.0.1}\n"
        "  tsig: {name: k, secret: c2VjcmV0c2VjcmV0}\n",
    )
    assert problems_for(tmp_path, rfc2136) == [
        "FILE:14: dns.tsig.secret: must be a secret reference (env:VARIABLE or file:/path/to/secret), "
        "not an inline value"
    ]
    path = tmp_path / "ok.yaml"
    path.write_text(rfc2136.replace("c2VjcmV0c2VjcmV0", "env:DNS_TSIG_SECRET"))
    assert load_runbook_file(path).runbook.dns.provider == "rfc2136"


def test_database_must_cover_every_region_and_no_other(tmp_path: Path) -> None:
    text = VALID + "database:\n  provider: rds\n  instances: {us-east-1: db1, eu-west-1: db2}\n"
    assert problems_for(tmp_path, text) == [
        "FILE:25: database.instances: region 'us-west-2' has no entry",
        "FILE:25: database.instances.eu-west-1: 'eu-west-1' is not one of the regions (us-east-1, us-west-2)",
    ]


def test_dns_weighted_traffic_needs_a_dns_provider_with_weights(tmp_path: Path) -> None:
    weighted = VALID + "traffic:\n  provider: dns-weighted\n  frontend_url: https://checkout.example.com\n"
    path = tmp_path / "ok.yaml"
    path.write_text(weighted)
    traffic = load_runbook_file(path).runbook.traffic
    assert traffic is not None and traffic.provider == "dns-weighted"
    assert traffic.servers == {"us-east-1": "203.0.113.10", "us-west-2": "198.51.100.20"}, (
        "the regions' addresses"
    )

    rfc2136 = weighted.replace(
        "  provider: route53\n  hosted_zone_id: Z0123456789ABCDEFGHIJ\n",
        "  provider: rfc2136\n  server: {name: ns1., address: 127.0.0.1}\n"
        "  tsig: {name: k, secret: env:DNS_TSIG_SECRET}\n",
    )
    assert problems_for(tmp_path, rfc2136) == [
        "FILE:25: traffic.provider: dns-weighted needs weighted records, which rfc2136 DNS does not have: use "
        "route53 or clouddns, or a haproxy traffic section"
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    assert problems_for(tmp_path, "service: checkout\n  regions: [\n") == [
        "FILE:2: YAML syntax error: mapping values are not allowed here"
    ]


def test_duplicate_yaml_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    [problem] = problems_for(tmp_path, VALID + "primary: us-west-2\n")
    assert problem.startswith("FILE:") and "duplicate key" in problem


def test_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(RunbookError) as caught:
        load_runbook_file(tmp_path / "missing.yaml")
    assert str(caught.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"


def test_unknown_service_names_the_services_that_exist(tmp_path: Path) -> None:
    (tmp_path / "checkout.yaml").write_text(VALID)
    with pytest.raises(UnknownServiceError) as caught:
        find_runbook("payments", tmp_path)
    assert str(caught.value) == f"{tmp_path}: unknown service 'payments'; runbooks there describe: checkout"
    assert find_runbook("checkout", tmp_path).runbook.service == "checkout"


def test_two_files_describing_one_service_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID)
    loaded, problems = load_directory(tmp_path)
    assert [item.source for item in loaded] == [str(tmp_path / "a.yaml")]
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'b.yaml'}: service: 'checkout' is also described by {tmp_path / 'a.yaml'}"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400)]
)
def test_durations_parse_and_render_back(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["5", "5 minutes", "", "m5", "5mm", "-5s"])
def test_durations_without_a_unit_or_in_words_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="use a number with a unit"):
        parse_duration(text)


def test_health_minimum_is_the_slowest_checks_consecutive_successes(tmp_path: Path) -> None:
    path = tmp_path / "checkout.yaml"
    path.write_text(
        VALID.replace(
            '      url: "https://{region}.checkout.example.com/healthz"',
            '      url: "https://{region}.checkout.example.com/healthz"\n'
            "    interval: 10s\n    consecutive_successes: 4",
        )
    )
    runbook = load_runbook_file(path).runbook
    assert runbook.health_minimum == timedelta(seconds=30)
    assert runbook.cutover_budget == timedelta(seconds=30 + 60 + 30)


@pytest.mark.parametrize(
    ("timeout", "interval"), [("25s", "25s"), ("5s", "25s"), ("1m", "1h"), ("250ms", "250ms")]
)
def test_any_positive_timeout_up_to_its_interval_is_accepted(
    tmp_path: Path, timeout: str, interval: str
) -> None:
    """Health validation heartbeats while it waits, so no interval is too long for the workflow."""
    path = tmp_path / "checkout.yaml"
    path.write_text(
        VALID.replace(
            "  rto: 5m",
            "  rto: 2h",
        ).replace(
            '      url: "https://{region}.checkout.example.com/healthz"',
            f'      url: "https://{{region}}.checkout.example.com/healthz"\n    timeout: {timeout}\n'
            f"    interval: {interval}\n    consecutive_successes: 2",
        )
    )
    [check] = load_runbook_file(path).runbook.health
    assert (format_duration(check.timeout), format_duration(check.interval)) == (timeout, interval)


def test_a_plain_header_value_is_refused_and_a_reference_is_accepted(tmp_path: Path) -> None:
    with_header = VALID.replace(
        '      url: "https://{region}.checkout.example.com/healthz"',
        '      url: "https://{region}.checkout.example.com/healthz"\n'
        "      headers:\n        Authorization: Bearer s3cr3t-token",
    )
    [problem] = problems_for(tmp_path, with_header)
    assert problem == (
        "FILE:22: health[0].http.headers.Authorization: a header value must be a secret reference "
        "(env:VARIABLE or file:/path/to/secret) holding the whole value, e.g. 'Bearer ...': a value written "
        "here would be copied into every workflow history, report and log"
    )
    assert "s3cr3t" not in problem, "the refusal never repeats the value"

    path = tmp_path / "ok.yaml"
    path.write_text(
        with_header.replace(
            "Bearer s3cr3t-token", "env:CHECKOUT_HEALTH_TOKEN\n        X-Tenant: file:/run/secrets/tenant"
        )
    )
    [check] = load_runbook_file(path).runbook.health
    assert check.http.headers == {
        "Authorization": "env:CHECKOUT_HEALTH_TOKEN",
        "X-Tenant": "file:/run/secrets/tenant",
    }


def test_a_header_name_http_cannot_send_is_refused_where_it_is_written(tmp_path: Path) -> None:
    text = VALID.replace(
        '      url: "https://{region}.checkout.example.com/healthz"',
        '      url: "https://{region}.checkout.example.com/healthz"\n'
        '      headers: {"X Tenant": "env:TENANT"}',
    )
    assert problems_for(tmp_path, text) == [
        "FILE:21: health[0].http.headers.X Tenant: not an HTTP header name (letters, digits, -)"
    ]


CANARY = VALID + (
    "database:\n  provider: rds\n  instances: {us-east-1: db1, us-west-2: db2}\n"
    "traffic:\n  provider: dns-weighted\n  frontend_url: https://checkout.example.com\n"
    "failback:\n  stages: [5, 50, 100]\n  analysis: {path: /}\n"
)
WRITES = "writes:\n  follow_primary: [us-east-1, us-west-2]\n  how: RDS proxy writer endpoint\n"


def test_a_canary_around_a_database_switch_declares_how_every_region_writes_and_a_write_path(
    tmp_path: Path,
) -> None:
    """The canary sends traffic to a region whose database may be a standby: refused unless declared."""
    assert problems_for(tmp_path, CANARY) == [
        "FILE:29: failback.database: the database switches before the canary, so the source region serves "
        "canary traffic on a standby: us-east-1, us-west-2 would refuse writes. Declare writes.follow_primary "
        "for every region (a writer endpoint, or libpq multi-host with target_session_attrs=read-write), or "
        "failback.database: last (the switch after 100 % traffic, before DNS)",
        "FILE:31: failback.analysis.write_path: the canary moves traffic around a database switch: its "
        "analysis must exercise a path that writes (a read is answered by a standby too)",
    ]
    partly = CANARY.replace("{path: /}", "{path: /, write_path: /orders}") + WRITES.replace(", us-west-2", "")
    assert problems_for(tmp_path, partly) == [
        "FILE:33: writes.follow_primary: the database switches before the canary, so the source region serves "
        "canary traffic on a standby: us-west-2 would refuse writes. Declare writes.follow_primary for every "
        "region (a writer endpoint, or libpq multi-host with target_session_attrs=read-write), or "
        "failback.database: last (the switch after 100 % traffic, before DNS)",
    ]
    roll_back = partly.replace("  stages:", "  database: last\n  on_failed_analysis: roll-back\n  stages:")
    assert problems_for(tmp_path, roll_back) == [
        "FILE:31: failback.on_failed_analysis: roll-back after the database moved sends all traffic to the "
        "source region, whose database is then a standby: allowed only where its app follows the primary "
        "(us-west-2 does not, see writes.follow_primary); use ask",
    ]
    unknown = WRITES.replace("us-west-2]", "eu-west-1]")
    assert problems_for(tmp_path, VALID + unknown) == [
        "FILE:24: writes.follow_primary[1]: 'eu-west-1' is not one of the regions (us-east-1, us-west-2)"
    ]

    for accepted in (
        CANARY.replace("{path: /}", "{path: /, write_path: /orders}") + WRITES,
        roll_back.replace("  on_failed_analysis: roll-back\n", ""),
        CANARY.replace("[5, 50, 100]", "[100]"),  # no stage below 100: no canary traffic on a standby
    ):
        path = tmp_path / "ok.yaml"
        path.write_text(accepted)
        load_runbook_file(path)


def test_a_runbook_recorded_before_the_canary_guard_still_decodes_for_replay(tmp_path: Path) -> None:
    """Open runs carry their runbook in their history: the file rules apply to files, not to those payloads."""
    path = tmp_path / "ok.yaml"
    path.write_text(CANARY.replace("{path: /}", "{path: /, write_path: /orders}") + WRITES)
    dumped = load_runbook_file(path).runbook.model_dump(mode="json")
    analysis = dumped["failback"]["analysis"]
    del dumped["writes"], analysis["write_path"], analysis["write_method"], analysis["write_share"]
    assert set(dumped["failback"]) == {"stages", "analysis"}, "as a runbook was written before the guard"
    recorded = Runbook.model_validate(json.loads(json.dumps(dumped)))
    assert recorded.failback is not None and recorded.failback.database is None and recorded.writes is None
    assert recorded.model_dump(mode="json") == dumped, "unset new fields are left out, as before they existed"
