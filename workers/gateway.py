"""The approval gateway: a click on a Slack button becomes the run's Update, and the workflow decides.

Two ways in, chosen by configuration:

- **HTTP** (the Slack app's interactivity Request URL, ``POST /slack/actions``). Before anything else every
  request must carry a valid ``X-Slack-Signature`` (HMAC-SHA256 of ``v0:<timestamp>:<body>`` with the
  signing secret), a timestamp at most 5 minutes old, and a signature not seen before (a replayed request).
  Slack wants an answer within 3 s: the Update takes milliseconds, and if it ever takes longer the request
  is answered anyway while the click finishes in the background.
- **Socket Mode**: slack-sdk's built-in client opens a websocket with the app-level token (no public
  endpoint); each envelope is acknowledged at once, then handled like an HTTP click.

A click becomes ``approve``, ``reject`` or ``accept_data_loss`` with ``ApprovalInput(approver=<Slack user id>,
channel="slack", gate=..., plan_checksum=...)``, sent to the run named by the button; a click on **Retry**,
**Skip** or **Abort** under a failed step becomes ``decide`` with ``DecisionInput(decision=...,
operator=<Slack user id>, channel="slack")``. The gateway holds no approval rule: the workflow's validator
decides who may pass which gate and who may decide a failed step. A refusal (the validator's message,
verbatim) goes to the clicker only, as an ephemeral message through the click's ``response_url`` (or
``chat.postEphemeral`` with the bot token); nothing changes. The Update id is the interaction's identity
(message, user, button), so a redelivered click or a double click is one Update.

Secrets come from the environment or files (``SLACK_SIGNING_SECRET``, ``SLACK_APP_TOKEN``, ``SLACK_BOT_TOKEN``
and their ``*_FILE`` forms), and are never logged; neither are payloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
from pydantic import ValidationError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.slack.blocks import ACTION_UPDATES, DECISION_ACTIONS
from activities.slack.client import api_url, slack_secret
from workflows.failover_models import ApprovalInput, DecisionInput, UpdateOutcome

log = logging.getLogger("drflow.gateway")

Mode = Literal["http", "socket"]
ACTIONS_PATH = "/slack/actions"
HEALTH_PATH = "/healthz"
MAX_BODY = 1 << 20
UPDATE_TIMEOUT = 30.0


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


@dataclass(frozen=True)
class Click:
    """One button click, as the gateway needs it."""

    update: str
    action_id: str
    workflow_id: str
    run_id: str | None
    gate: str | None
    plan_checksum: str | None
    user_id: str
    user_name: str
    channel_id: str | None
    message_ts: str | None
    trigger_id: str | None
    response_url: str | None
    decision: str | None = None
    step: str | None = None

    @property
    def update_id(self) -> str:
        """The interaction's identity: the same person pressing the same button of the same message.

        Slack's ``trigger_id`` differs between two clicks, so it would deduplicate only a redelivery; this id
        also makes a double click one Update (the second returns the first's result).
        """
        where = self.message_ts or self.trigger_id or "-"
        return f"slack:{self.channel_id or '-'}:{where}:{self.user_id}:{self.action_id}"

    @property
    def target(self) -> str:
        """What the click answers, for logs and refusals: the gate or the failed step."""
        return f"step {self.step!r}" if self.update == "decide" else f"gate {self.gate}"

    def answer(self) -> ApprovalInput | DecisionInput:
        name = f"@{self.user_name}" if self.user_name else self.user_id
        if self.update == "decide":
            return DecisionInput(
                decision=self.decision,  # validated by the model: retry, skip or abort
                operator=self.user_id,
                reason=f"Slack: {name}",
                channel="slack",
                step=self.step or None,
            )
        reason = (
            f"accepted in Slack by {name} after the data-loss confirmation"
            if self.update == "accept_data_loss"
            else f"Slack: {name}"
        )
        return ApprovalInput(
            approver=self.user_id,
            reason=reason,
            channel="slack",
            gate=self.gate,  # validated by the model: a gate name
            plan_checksum=self.plan_checksum or None,
        )


class NotOurs(ValueError):
    """A payload that is not a click on one of drflow's buttons (or whose button value is not drflow's)."""


def parse_click(payload: Mapping[str, Any]) -> Click:
    if payload.get("type") != "block_actions":
        raise NotOurs(f"payload type {payload.get('type')!r}")
    action = next(
        (
            a
            for a in payload.get("actions") or []
            if a.get("action_id") in ACTION_UPDATES or a.get("action_id") in DECISION_ACTIONS
        ),
        None,
    )
    if action is None:
        raise NotOurs("no drflow action")
    try:
        value = json.loads(action.get("value") or "")
        workflow_id = str(value["w"])
    except (ValueError, KeyError, TypeError) as err:
        raise NotOurs(f"button value is not drflow's: {err}") from None
    user = payload.get("user") or {}
    container = payload.get("container") or {}
    channel = payload.get("channel") or {}
    message = payload.get("message") or {}
    if not user.get("id"):
        raise NotOurs("no user in the payload")
    action_id = str(action["action_id"])
    decision = DECISION_ACTIONS.get(action_id)
    return Click(
        update="decide" if decision is not None else ACTION_UPDATES[action_id],
        action_id=action_id,
        workflow_id=workflow_id,
        run_id=value.get("r") or None,
        gate=value.get("g") or None,
        plan_checksum=value.get("c") or None,
        user_id=str(user["id"]),
        user_name=str(user.get("username") or user.get("name") or ""),
        channel_id=channel.get("id") or container.get("channel_id"),
        message_ts=container.get("message_ts") or message.get("ts"),
        trigger_id=payload.get("trigger_id"),
        response_url=payload.get("response_url"),
        decision=decision,
        step=value.get("s") or None,
    )


@dataclass(frozen=True)
class ClickOutcome:
    accepted: bool
    message: str


@dataclass(frozen=True)
class Refusal:
    """Why an HTTP request was refused; ``authentic`` when Slack did sign it (its payload can be trusted)."""

    reason: str
    authentic: bool
    tell: str | None = None


class RecentSignatures:
    """Signatures seen within the freshness window: a second delivery of the same bytes is a replay."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen_before(self, signature: str, now: float) -> bool:
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - self._window:
                self._seen.popitem(last=False)
            if signature in self._seen:
                return True
            self._seen[signature] = now
            return False


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v0=" + digest.hexdigest()


class ApprovalGateway:
    """Turns clicks into Updates and refusals into ephemeral messages; shared by both modes."""

    def __init__(self, client: Client, config: GatewayConfig) -> None:
        self._client = client
        self._config = config
        self._recent = RecentSignatures(config.max_age_seconds)
        self._http = httpx.AsyncClient(timeout=5.0, trust_env=True)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def accepts_http(self) -> bool:
        return self._config.signing_secret is not None

    # ------------------------------------------------------------------------------------------- clicks
    async def handle_payload(self, payload: Mapping[str, Any]) -> ClickOutcome | None:
        """A Slack interaction payload; None when it is not a click on a drflow button."""
        try:
            click = parse_click(payload)
        except NotOurs as err:
            log.info("ignored an interaction: %s", err)
            return None
        outcome = await self.send_update(click)
        log.info(
            "%s of %s %s by %s: %s",
            click.update, click.workflow_id, click.target, click.user_id,
            "accepted" if outcome.accepted else f"refused: {outcome.message}",
        )  # fmt: skip
        if not outcome.accepted:
            await self.tell(click, f":no_entry: {outcome.message}. Nothing changed.")
        return outcome

    async def send_update(self, click: Click) -> ClickOutcome:
        try:
            answer = click.answer()
        except ValidationError:
            if click.update == "decide":
                return ClickOutcome(
                    False, f"this button does not name a drflow decision ({click.decision!r})"
                )
            return ClickOutcome(False, f"this button does not name a drflow gate ({click.gate!r})")
        handle = self._client.get_workflow_handle(click.workflow_id, run_id=click.run_id)
        try:
            result = await asyncio.wait_for(
                handle.execute_update(click.update, answer, id=click.update_id, result_type=UpdateOutcome),
                UPDATE_TIMEOUT,
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            return ClickOutcome(False, cause.message if isinstance(cause, ApplicationError) else str(cause))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                ended = "completed" in err.message
                return ClickOutcome(
                    False,
                    "this run has already ended" if ended else f"this run no longer exists ({err.message})",
                )
            return ClickOutcome(
                False,
                f"drflow could not reach Temporal ({err.message}): "
                + (
                    f"decide with `drflow decide {click.workflow_id} {click.decision}`"
                    if click.update == "decide"
                    else f"approve with `drflow approve {click.workflow_id}`"
                ),
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            return ClickOutcome(
                False, f"the run did not answer in time: is a drflow worker running? ({click.workflow_id})"
            )
        return ClickOutcome(result.accepted, result.message)

    async def tell(self, click: Click, text: str) -> None:
        """An ephemeral message to the clicker: through the click's response_url, else chat.postEphemeral."""
        if click.response_url and click.response_url.startswith(("https://", "http://")):
            try:
                response = await self._http.post(
                    click.response_url,
                    json={"response_type": "ephemeral", "replace_original": False, "text": text},
                )
                if response.status_code < 300:
                    return
                log.warning("response_url answered HTTP %s", response.status_code)
            except httpx.HTTPError as err:
                log.warning("response_url failed: %s", type(err).__name__)
        if self._config.bot_token and click.channel_id:
            await asyncio.to_thread(self._post_ephemeral, click.channel_id, click.user_id, text)

    def _post_ephemeral(self, channel: str, user: str, text: str) -> None:
        client = WebClient(token=self._config.bot_token, base_url=self._config.api_url, timeout=5)
        try:
            client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as err:
            log.warning("chat.postEphemeral failed: %s", err.response.get("error"))
        except (SlackClientError, OSError) as err:
            log.warning("chat.postEphemeral failed: %s", type(err).__name__)

    # --------------------------------------------------------------------------------------------- HTTP
    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> Refusal | None:
        """The signature first (so a refusal knows whether the payload is Slack's), then age, then replay."""
        secret = self._config.signing_secret
        assert secret is not None
        stamp = headers.get("x-slack-request-timestamp")
        given = headers.get("x-slack-signature")
        if not stamp or not given:
            return Refusal("missing X-Slack-Request-Timestamp or X-Slack-Signature", authentic=False)
        try:
            sent = int(stamp)
        except ValueError:
            return Refusal("X-Slack-Request-Timestamp is not a number", authentic=False)
        if not hmac.compare_digest(signature(secret, stamp, body), given):
            return Refusal("invalid X-Slack-Signature", authentic=False)
        if abs(now - sent) > self._config.max_age_seconds:
            return Refusal(
                "request timestamp older than 5 minutes",
                authentic=True,
                tell=":no_entry: Your click reached drflow more than 5 minutes after Slack sent it "
                "(check the gateway's clock); it was refused and nothing changed. Click again.",
            )
        if self._recent.seen_before(given, now):
            return Refusal(
                "replayed request (signature seen before)",
                authentic=True,
                tell=":no_entry: A repeated copy of your click was refused (replayed request); "
                "nothing changed by it.",
            )
        return None

    async def handle_http(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """One request to the Request URL: (status, body). Answers within ``answer_within_seconds``."""
        lowered = {key.lower(): value for key, value in headers.items()}
        refusal = self.verify(body, lowered, time.time())
        form = parse_qs(body.decode("utf-8", "replace"))
        payload: dict[str, Any] | None = None
        try:
            payload = json.loads(form["payload"][0]) if "payload" in form else None
        except ValueError:
            payload = None
        if refusal is not None:
            log.warning("refused a request to %s: %s", ACTIONS_PATH, refusal.reason)
            if refusal.authentic and refusal.tell and payload is not None:
                try:
                    click = parse_click(payload)
                except NotOurs:
                    pass
                else:
                    await self._within_deadline(self.tell(click, refusal.tell))
            return 401, refusal.reason
        if "ssl_check" in form:
            return 200, ""
        if payload is None:
            return 400, "no interaction payload"
        await self._within_deadline(self.handle_payload(payload))
        return 200, ""

    async def _within_deadline(self, work: Coroutine[Any, Any, Any]) -> None:
        """Wait for the work up to Slack's deadline; past it, let it finish in the background."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task}, timeout=self._config.answer_within_seconds)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=UPDATE_TIMEOUT)
        await self._http.aclose()


# ---------------------------------------------------------------------------------------------- servers
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gateway: ApprovalGateway
    loop: asyncio.AbstractEventLoop
    health: Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.split("?")[0] != HEALTH_PATH:
            self._answer(404, "not found")
            return
        status, body = self.server.health()
        self._answer(status, json.dumps(body), "application/json")

    def do_POST(self) -> None:
        if self.path.split("?")[0] != ACTIONS_PATH:
            self._answer(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(413, "request body missing a valid Content-Length or too large")
            return
        body = self.rfile.read(length)
        if not self.server.gateway.accepts_http:
            self._answer(503, "the gateway is not configured for HTTP interactivity")
            return
        future = asyncio.run_coroutine_threadsafe(
            self.server.gateway.handle_http(body, dict(self.headers.items())), self.server.loop
        )
        try:
            status, text = future.result(timeout=10)
        except Exception as err:  # answer Slack rather than hang up; the cause goes to the log
            log.exception("click handling failed: %s", type(err).__name__)
            status, text = 500, "internal error"
        self._answer(status, text)

    def _answer(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class SocketModeListener:
    """Slack's Socket Mode through slack-sdk's built-in client (threads, no extra dependency)."""

    def __init__(
        self, gateway: ApprovalGateway, config: GatewayConfig, loop: asyncio.AbstractEventLoop
    ) -> None:
        assert config.app_token is not None
        self._gateway = gateway
        self._loop = loop
        self._client = SocketModeClient(
            app_token=config.app_token,
            web_client=WebClient(base_url=config.api_url, timeout=10),
            logger=logging.getLogger("drflow.gateway.socket"),
        )
        self._client.socket_mode_request_listeners.append(self._on_request)  # type: ignore[arg-type]

    def connect(self) -> None:
        """Blocking: ``apps.connections.open``, then the websocket handshake."""
        self._client.connect()

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    def close(self) -> None:
        self._client.close()

    def _on_request(self, client: SocketModeClient, request: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive":
            asyncio.run_coroutine_threadsafe(self._gateway.handle_payload(request.payload), self._loop)


@dataclass
class RunningGateway:
    gateway: ApprovalGateway
    url: str
    listener: SocketModeListener | None


@asynccontextmanager
async def running_gateway(client: Client, config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    """The gateway serving until the block ends: /healthz always, the Request URL or Socket Mode."""
    loop = asyncio.get_running_loop()
    gateway = ApprovalGateway(client, config)
    server = _Server((config.host, config.port), _Handler)
    server.gateway, server.loop = gateway, loop
    listener: SocketModeListener | None = None

    def health() -> tuple[int, dict[str, Any]]:
        if config.idle_reason is not None:
            return 200, {"status": "idle", "reason": config.idle_reason}
        if listener is not None and not listener.connected:
            return 503, {"status": "disconnected", "mode": config.mode}
        return 200, {"status": "ok", "mode": config.mode}

    server.health = health
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="drflow-gateway-http", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    try:
        if config.mode == "socket" and config.idle_reason is None:
            listener = SocketModeListener(gateway, config, loop)
            await asyncio.to_thread(listener.connect)
        yield RunningGateway(gateway=gateway, url=f"http://{host!s}:{port}", listener=listener)
    finally:
        if listener is not None:
            await asyncio.to_thread(listener.close)
        server.shutdown()
        server.server_close()
        thread.join(5)
        await gateway.aclose()


async def serve(client: Client, config: GatewayConfig, stop: asyncio.Event) -> None:
    async with running_gateway(client, config) as running:
        if config.idle_reason is not None:
            log.warning("gateway idle: %s", config.idle_reason)
        elif config.mode == "http":
            log.info("gateway: Slack Request URL %s%s", running.url, ACTIONS_PATH)
        else:
            log.info("gateway: Socket Mode connected")
        await stop.wait()
