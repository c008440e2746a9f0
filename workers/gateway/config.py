"""The gateway's configuration: mode, address, Slack secrets (never in ``repr``), and Slack's deadlines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from temporalio.exceptions import ApplicationError

from activities.slack.client import api_url, slack_secret

Mode = Literal["http", "socket"]


class GatewayConfigError(ValueError):
    """The gateway cannot run as configured: a secret is missing or unreadable."""


@dataclass(frozen=True)
class GatewayConfig:
    mode: Mode = "http"
    host: str = "127.0.0.1"
    port: int = 3000
    signing_secret: str | None = field(default=None, repr=False)
    app_token: str | None = field(default=None, repr=False)
    bot_token: str | None = field(default=None, repr=False)
    api_url: str = "https://slack.com/api/"
    max_age_seconds: float = 300.0
    answer_within_seconds: float = 2.5
    idle_reason: str | None = None

    @classmethod
    def from_env(cls, mode: Mode, host: str, port: int, *, idle_without_slack: bool = False) -> GatewayConfig:
        """Secrets from ``SLACK_*`` (or ``SLACK_*_FILE``); without them, refuse to start (or idle)."""
        try:
            signing_secret = slack_secret("SLACK_SIGNING_SECRET")
            app_token = slack_secret("SLACK_APP_TOKEN")
            bot_token = slack_secret("SLACK_BOT_TOKEN")
        except ApplicationError as err:
            raise GatewayConfigError(err.message) from None
        missing = None
        if mode == "http" and signing_secret is None:
            missing = "HTTP mode needs SLACK_SIGNING_SECRET (or SLACK_SIGNING_SECRET_FILE)"
        if mode == "socket" and app_token is None:
            missing = "Socket Mode needs an app-level token in SLACK_APP_TOKEN (or SLACK_APP_TOKEN_FILE)"
        if mode == "socket" and app_token is not None and not app_token.startswith("xapp-"):
            raise GatewayConfigError("SLACK_APP_TOKEN must be an app-level token (xapp-…), not a bot token")
        if missing is not None and not idle_without_slack:
            raise GatewayConfigError(missing)
        return cls(
            mode=mode, host=host, port=port, signing_secret=signing_secret, app_token=app_token,
            bot_token=bot_token, api_url=api_url(), idle_reason=missing,
        )  # fmt: skip
