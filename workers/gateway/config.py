"""The gateway's configuration: mode, address, Slack secrets and the attestation key (never in ``repr``),
and Slack's deadlines."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from temporalio.exceptions import ApplicationError

from activities.approvals.attestations import GatewaySigner
from activities.secrets import resolve_secret
from activities.slack.client import api_url, slack_secret
from runbooks.model import NAME_PATTERN
from runbooks.secrets import SECRET_REF_PATTERN

Mode = Literal["http", "socket"]
KEY_ENV = "DRFLOW_GATEWAY_KEY"
NAME_ENV = "DRFLOW_GATEWAY_NAME"


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
    signer: GatewaySigner | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, mode: Mode, host: str, port: int, *, idle_without_slack: bool = False) -> GatewayConfig:
        """Secrets from ``SLACK_*`` (or ``SLACK_*_FILE``); without them, refuse to start (or idle)."""
        try:
            signing_secret = slack_secret("SLACK_SIGNING_SECRET")
            app_token = slack_secret("SLACK_APP_TOKEN")
            bot_token = slack_secret("SLACK_BOT_TOKEN")
        except ApplicationError as err:
            raise GatewayConfigError(err.message) from None
        signer = gateway_signer(os.environ.get(KEY_ENV), os.environ.get(NAME_ENV))
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
            bot_token=bot_token, api_url=api_url(), idle_reason=missing, signer=signer,
        )  # fmt: skip


def gateway_signer(reference: str | None, name: str | None) -> GatewaySigner | None:
    """The attestation key from its secret reference; None when neither setting is given.

    Half a configuration is refused rather than silently unsigned: a gateway that was meant to attest would
    otherwise send answers that verified runbooks refuse. No message repeats the value (it may be the key).
    """
    reference, name = (reference or "").strip() or None, (name or "").strip() or None
    if reference is None and name is None:
        return None
    if reference is None or name is None:
        given, needed = (KEY_ENV, NAME_ENV) if name is None else (NAME_ENV, KEY_ENV)
        raise GatewayConfigError(f"{given} is set but {needed} is not: the gateway key needs both")
    if not re.fullmatch(SECRET_REF_PATTERN, reference):
        raise GatewayConfigError(
            f"{KEY_ENV} must be a secret reference (env:VARIABLE or file:/path/to/key), not the key itself"
        )
    if not re.fullmatch(NAME_PATTERN, name):
        raise GatewayConfigError(
            f"{NAME_ENV} must be the gateway's name in the people file (lowercase letters, digits, dashes)"
        )
    try:
        text = resolve_secret(reference)
    except ApplicationError as err:
        raise GatewayConfigError(f"{KEY_ENV}: {err.message}") from None
    try:
        return GatewaySigner(name, text.strip() + "\n")
    except ValueError as err:
        raise GatewayConfigError(f"{KEY_ENV} ({reference}): {err}") from None
