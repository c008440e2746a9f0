"""The Slack Web API as drflow uses it: the bot token, the client, and Slack's failures as typed errors.

Every call goes through slack-sdk's ``WebClient`` (``SLACK_API_URL`` points it elsewhere, e.g. at a
stand-in). The bot token comes from ``SLACK_BOT_TOKEN`` or the file named by ``SLACK_BOT_TOKEN_FILE`` at the
moment of use: it is never an activity input or result, so it never reaches a history, a log line or a
report.

Errors are typed for the workflow's retry policy (``activities.errors.SlackErrorType``): a rate limit is
retried after Slack's ``Retry-After``; an unreachable Slack is retried with backoff; a missing token, a bad
token or scope, an unknown channel or a channel the bot is not in is not retried, and says what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from temporalio.exceptions import ApplicationError

from activities.errors import SlackErrorType
from activities.temporal_ui import workflow_url

API_URL_ENV = "SLACK_API_URL"
DEFAULT_API_URL = "https://slack.com/api/"
HTTP_TIMEOUT = 10


# What no retry can fix: the workflow stops using Slack for the run and says why in the report.
FATAL_ERRORS = frozenset({SlackErrorType.NOT_CONFIGURED, SlackErrorType.AUTH, SlackErrorType.CHANNEL})
NON_RETRYABLE_ERRORS = [*sorted(FATAL_ERRORS), SlackErrorType.REFUSED]

_AUTH_ERRORS = frozenset(
    {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "missing_scope",
     "no_permission", "ekm_access_denied", "not_allowed_token_type"}
)  # fmt: skip
_CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})


# ------------------------------------------------------------------------------------------ secrets
def slack_secret(name: str) -> str | None:
    """``NAME`` from the environment, else the contents of the file named by ``NAME_FILE``; never logged."""
    value = os.environ.get(name)
    if value:
        return value.strip()
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise ApplicationError(
            f"{name}_FILE names {path}, which cannot be read: {err.strerror or err}",
            type=SlackErrorType.NOT_CONFIGURED,
            non_retryable=True,
        ) from None
    return text or None


def api_url() -> str:
    url = os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def bot_client() -> WebClient:
    token = slack_secret("SLACK_BOT_TOKEN")
    if token is None:
        raise ApplicationError(
            "SLACK_BOT_TOKEN (or SLACK_BOT_TOKEN_FILE) is not set on the worker: no Slack messages; "
            "approve through the CLI or the Web UI",
            type=SlackErrorType.NOT_CONFIGURED,
            non_retryable=True,
        )
    return WebClient(token=token, base_url=api_url(), timeout=HTTP_TIMEOUT)


def run_link(workflow_id: str, run_id: str, namespace: str) -> str:
    """The run's page in the Web UI (``DRFLOW_UI_URL``, see ``activities.temporal_ui``)."""
    return workflow_url(namespace, workflow_id, run_id)


# ------------------------------------------------------------------------------------------- errors
CHANNEL_SETTING = "approvals.slack.channel in the runbook"


def slack_error(method: str, err: Exception, channel_setting: str = CHANNEL_SETTING) -> ApplicationError:
    """An operator-facing, typed error for a failed Web API call; ``channel_setting`` is where the
    channel came from, for the fix an unknown channel needs."""
    if isinstance(err, SlackApiError):
        response = err.response
        code = str(response.get("error") or f"HTTP {response.status_code}")
        if response.status_code == 429 or code == "ratelimited":
            delay = _retry_after(response.headers)
            return ApplicationError(
                f"Slack rate-limited {method}: retrying after {delay}s",
                type=SlackErrorType.RATE_LIMITED,
                next_retry_delay=timedelta(seconds=delay),
            )
        if code in _AUTH_ERRORS:
            needed = response.get("needed")
            hint = f" (needs scope {needed})" if needed else ""
            return ApplicationError(
                f"Slack refused the bot token for {method}: {code}{hint}; check SLACK_BOT_TOKEN and the "
                "app's scopes (infra/slack/manifest.yaml)",
                type=SlackErrorType.AUTH,
                non_retryable=True,
            )
        if code in _CHANNEL_ERRORS:
            fix = (
                "invite the bot to the channel (/invite @drflow)"
                if code == "not_in_channel"
                else f"check {channel_setting}"
            )
            return ApplicationError(
                f"Slack {method}: {code}: {fix}", type=SlackErrorType.CHANNEL, non_retryable=True
            )
        if response.status_code >= 500 or code in ("internal_error", "fatal_error", "service_unavailable"):
            return ApplicationError(f"Slack {method} failed: {code}", type=SlackErrorType.UNAVAILABLE)
        return ApplicationError(
            f"Slack refused {method}: {code}", type=SlackErrorType.REFUSED, non_retryable=True
        )
    if isinstance(err, URLError | OSError | TimeoutError):
        reason = getattr(err, "reason", err)
        return ApplicationError(
            f"Slack {method}: cannot reach {api_url()}: {reason}", type=SlackErrorType.UNAVAILABLE
        )
    return ApplicationError(f"Slack {method} failed: {err}", type=SlackErrorType.FAILED)


def _retry_after(headers: Any) -> int:
    for key, value in dict(headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(1, int(float(raw)))
            except ValueError:
                break
    return 30


def call(
    method: str,
    request: Callable[..., SlackResponse],
    channel_setting: str = CHANNEL_SETTING,
    **arguments: Any,
) -> SlackResponse:
    """``request(**arguments)``, with Slack's failures turned into typed, operator-facing errors."""
    try:
        return request(**arguments)
    except (SlackApiError, SlackClientError, URLError, OSError, TimeoutError) as err:
        raise slack_error(method, err, channel_setting) from None
