"""DRFLOW_UI_URL: one setting behind the Slack links and the CLI's links, with the same rules for both."""

from __future__ import annotations

import pytest

from activities.slack.client import run_link
from activities.temporal_ui import (
    DEFAULT_UI_URL,
    RUNS_QUERY,
    UI_URL_ENV,
    runs_list_url,
    ui_url,
    workflow_url,
)
from workers.cli.common import workflow_link
from workers.connection import TemporalSettings


def test_unset_or_empty_means_the_dev_servers_ui_and_a_trailing_slash_is_dropped() -> None:
    assert ui_url({}) == ui_url({UI_URL_ENV: "  "}) == DEFAULT_UI_URL == "http://localhost:8233"
    assert ui_url({UI_URL_ENV: "https://ui.example/temporal/"}) == "https://ui.example/temporal"


def test_slack_and_cli_links_come_from_the_same_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UI_URL_ENV, "http://localhost:8080/")
    settings = TemporalSettings.resolve(address="temporal:7233", namespace="prod.a1b2c")
    assert (
        workflow_link(settings, "failover-web")
        == "http://localhost:8080/namespaces/prod.a1b2c/workflows/failover-web"
    )
    assert run_link("failover-web", "r1", "prod.a1b2c") == f"{workflow_url('prod.a1b2c', 'failover-web')}/r1"
    # ids are user-chosen: a slash in one stays one path segment
    assert workflow_url("default", "a/b", "r") == "http://localhost:8080/namespaces/default/workflows/a%2Fb/r"


def test_the_runs_view_link_filters_by_type_and_reads_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link `drflow dev` prints and docs/operations.md saves as a view (the browser test opens it)."""
    monkeypatch.setenv(UI_URL_ENV, "https://ui.example/")
    assert runs_list_url("prod ns") == (
        "https://ui.example/namespaces/prod%20ns/workflows?query="
        "WorkflowType%20IN%20('Failover',%20'Failback',%20'Drill',%20'Readiness')"
    )
    assert "ServiceLock" not in RUNS_QUERY and "ArchiveRun" not in RUNS_QUERY
    assert runs_list_url("default", "DrflowStep = 'refused'", base="http://h:1").endswith(
        "query=DrflowStep%20%3D%20'refused'"
    )
