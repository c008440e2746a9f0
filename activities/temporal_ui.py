"""The Temporal Web UI's address, the one setting behind every run link drflow prints or posts.

``DRFLOW_UI_URL`` is the address people open in a browser (not the gRPC frontend): the Slack messages'
"open the run" links (``activities.slack``) and the CLI's ``started <id>  <link>`` lines use it. It lives in
the lowest layer that needs it (Slack links are built inside activities), so ``workers/`` imports it from here
and nothing defines it twice. The default is the dev server's UI (``drflow dev``); docker-compose.yml sets
the published UI (``http://localhost:8080``); set it to your UI or Temporal Cloud's
(``https://cloud.temporal.io``) wherever the worker or the CLI runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

UI_URL_ENV = "DRFLOW_UI_URL"
DEFAULT_UI_URL = "http://localhost:8233"


def ui_url(env: Mapping[str, str] | None = None) -> str:
    """The UI's base address, without a trailing slash; unset or empty means the default."""
    env = os.environ if env is None else env
    return (env.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL).rstrip("/")


RUNS_QUERY = "WorkflowType IN ('Failover', 'Failback', 'Drill', 'Readiness')"
"""The Workflows list's filter that shows drflow's runs and hides its helpers (``ServiceLock``,
``ArchiveRun``). By type, not by ``DrflowKind``: a run whose input did not validate failed before it could
tag itself, and it belongs in the view."""


def runs_list_url(namespace: str, query: str = RUNS_QUERY, base: str | None = None) -> str:
    """The Workflows list filtered to drflow's runs: the address docs/operations.md saves as a view."""
    root = (base or ui_url()).rstrip("/")
    readable = quote(query, safe="'(),")  # the UI takes quotes and parentheses as typed
    return f"{root}/namespaces/{quote(namespace, safe='')}/workflows?query={readable}"


def workflow_url(namespace: str, workflow_id: str, run_id: str | None = None) -> str:
    """The run's page (the workflow's latest run without ``run_id``); ids are quoted: they may hold ``/``."""
    path = f"{ui_url()}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow_id, safe='')}"
    return f"{path}/{quote(run_id, safe='')}" if run_id else path
