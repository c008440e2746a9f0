"""The readiness story end to end, as a sandbox user lives it: lag creeps on the real PostgreSQL pair while
readiness runs on its schedule; exactly one Slack alert and one firing Prometheus alert say so, and exactly
one "resolved" each when replay resumes.

Real: the dev server and its schedule, the sandbox (PostgreSQL primary/standby, BIND, HAProxy, apps), a
worker serving metrics, Prometheus scraping it and evaluating the shipped rules (``infra/prometheus``) as
they are, except the early-warning alert's ``for: 1m``, shortened to 1 s so the test does not wait a minute
(``promtool test rules`` covers the real window). Stand-in: Slack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.prometheus import query, scraped_client
from tests.support.sandbox import Writer, sandbox_world
from tests.support.slack.standin import SlackStandIn, slack_for_worker
from tests.test_readiness_alerts import scheduled_check
from workers.cli.readiness import readiness_schedule, schedule_id
from workers.worker import build_worker
from workflows.common import TASK_QUEUE

RULES = Path(__file__).resolve().parent.parent / "infra" / "prometheus" / "rules.yaml"
ALERT = "DrflowReadinessEarlyWarning"


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield running


async def lag_alerts(base: str, service: str) -> list[dict[str, Any]]:
    """Every alert firing for the service: whichever rule, so a second one would show."""
    expr = f'ALERTS{{service="{service}",alertstate="firing"}}'
    return await asyncio.to_thread(query, base, expr)


async def until_alerts(base: str, service: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            found = await lag_alerts(base, service)
            if len(found) == count:
                return found
            await asyncio.sleep(0.5)


async def test_lag_creeping_gives_one_slack_alert_and_one_firing_rule_and_one_resolved_each(
    dev_env: WorkflowEnvironment, standin: SlackStandIn, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    shipped = RULES.read_text()
    window = "expr: drflow_readiness_warning == 1\n        for: 1m"
    assert window in shipped
    rules.write_text(shipped.replace(window, window.replace("1m", "1s")))
    async with scraped_client(dev_env, tmp_path, rules) as (client, base):
        with sandbox_world() as sandbox:
            # Warn at 6 s of lag, fail at 2 min: a slowed check still sees a warning, not a breach.
            sandbox.write_runbook(
                objectives__rpo="2m", objectives__rto="20m", objectives__warn_at=0.05,
                alerts={"slack_channel": "C0DRFLOW"},
            )  # fmt: skip
            service = sandbox.service
            async with build_worker(client, sandbox.runbooks, task_queue=TASK_QUEUE):
                handle = await client.create_schedule(
                    schedule_id(service), readiness_schedule(service, timedelta(hours=1))
                )
                writer = Writer(sandbox, "region-a")
                writer.start()
                try:
                    calm = await scheduled_check(dev_env, handle, service)
                    assert calm.verdict == "ready" and calm.warnings == [], calm.reasons
                    await asyncio.sleep(3)  # a few evaluations: nothing fires on a calm service
                    assert await lag_alerts(base, service) == []

                    with sandbox.connect("region-b") as standby:
                        standby.execute("SELECT pg_wal_replay_pause()")
                    await asyncio.sleep(8)
                    lagging = await scheduled_check(dev_env, handle, service)
                    assert [w.code for w in lagging.warnings] == ["lag-near-rpo"], lagging.reasons
                    [firing] = await until_alerts(base, service, 1)
                    assert (firing["metric"]["alertname"], firing["metric"]["warning"]) == (
                        ALERT,
                        "lag-near-rpo",
                    )
                    still = await scheduled_check(dev_env, handle, service)
                    assert [w.code for w in still.warnings] == ["lag-near-rpo"]
                    assert len(await lag_alerts(base, service)) == 1, "the same alert, not a second one"

                    with sandbox.connect("region-b") as standby:
                        standby.execute("SELECT pg_wal_replay_resume()")
                    await asyncio.sleep(1)
                    resolved = await scheduled_check(dev_env, handle, service)
                    assert resolved.verdict == "ready" and resolved.warnings == [], resolved.reasons
                    assert await until_alerts(base, service, 0) == []
                finally:
                    writer.stop()
                    await handle.delete()

    messages = [m.text.splitlines()[0] for m in standin.top_level()]
    assert messages == [
        f"Readiness of {service}: READY → DEGRADED",
        f"Readiness of {service}: DEGRADED → READY",
    ]
    assert "early warning: replication lag region-a → region-b is" in standin.top_level()[0].text
    assert "resolved: lag-near-rpo" in standin.top_level()[1].text
