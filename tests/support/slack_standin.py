"""A local stand-in for Slack: the Web API over HTTP, ``response_url``s, and a Socket Mode websocket.

The Web API answers on the real paths (``/api/chat.postMessage`` …) with the real JSON shapes, checks the
bearer token like Slack does (``invalid_auth``), refuses blocks outside Block Kit's limits
(``invalid_blocks``), and can answer HTTP 429 with ``Retry-After`` for the next N calls of a method. It keeps
every call and every message, with its edits, so tests read what Slack users would see.

Socket Mode: ``apps.connections.open`` (app token) returns the ``ws://127.0.0.1`` URL of a websocket server
(the ``websockets`` package) that greets with ``hello``, pushes ``interactive`` envelopes and records the
client's acknowledgements; slack-sdk's built-in Socket Mode client connects to it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from websockets.asyncio.server import ServerConnection, serve

BOT_TOKEN = "xoxb-standin-bot-token-0123456789"
APP_TOKEN = "xapp-1-standin-app-token-0123456789"
SIGNING_SECRET = "standin-signing-secret-0123456789abcdef"
TEAM = "T0DRFLOW"
APP_ID = "A0DRFLOW"

# Block Kit limits (api.slack.com/reference/block-kit): what every message posted here is checked against.
BLOCK_TYPES = {"section", "header", "context", "actions", "divider", "image", "input", "rich_text"}


def block_kit_problems(blocks: Any, text: str | None = None) -> list[str]:
    """Every way a message breaks Slack's Block Kit limits (empty when Slack would accept it)."""
    problems: list[str] = []
    if text is not None and len(text) > 40_000:
        problems.append(f"text is {len(text)} characters (> 40000)")
    if blocks is None:
        return problems
    if not isinstance(blocks, list):
        return [*problems, "blocks is not a list"]
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks (> 50)")
    action_ids: list[str] = []
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            problems.append(f"{where}: unknown type {kind!r}")
        if len(block.get("block_id", "")) > 255:
            problems.append(f"{where}: block_id > 255")
        if kind == "section":
            body = block.get("text")
            if body is None and not block.get("fields"):
                problems.append(f"{where}: section without text or fields")
            if body is not None:
                problems += _text_problems(body, 3000, f"{where}.text")
            fields = block.get("fields") or []
            if len(fields) > 10:
                problems.append(f"{where}: {len(fields)} fields (> 10)")
            for n, item in enumerate(fields):
                problems += _text_problems(item, 2000, f"{where}.fields[{n}]")
        elif kind == "header":
            problems += _text_problems(block.get("text"), 150, f"{where}.text", plain_only=True)
        elif kind == "context":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 10:
                problems.append(f"{where}: {len(elements)} context elements (1..10)")
            for n, item in enumerate(elements):
                problems += _text_problems(item, 3000, f"{where}.elements[{n}]")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 25:
                problems.append(f"{where}: {len(elements)} action elements (1..25)")
            for n, item in enumerate(elements):
                problems += _button_problems(item, f"{where}.elements[{n}]")
                action_ids.append(item.get("action_id", ""))
    duplicates = {a for a in action_ids if action_ids.count(a) > 1}
    if duplicates:
        problems.append(f"duplicate action_id {sorted(duplicates)}")
    return problems


def _text_problems(obj: Any, limit: int, where: str, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"{where}: not a text object"]
    if plain_only and obj["type"] != "plain_text":
        return [f"{where}: must be plain_text"]
    length = len(obj.get("text") or "")
    if length == 0:
        return [f"{where}: empty text"]
    return [f"{where}: {length} characters (> {limit})"] if length > limit else []


def _button_problems(button: dict[str, Any], where: str) -> list[str]:
    if button.get("type") != "button":
        return [f"{where}: not a button"]
    problems = _text_problems(button.get("text"), 75, f"{where}.text", plain_only=True)
    if len(button.get("value", "")) > 2000:
        problems.append(f"{where}: value > 2000")
    if not 1 <= len(button.get("action_id", "")) <= 255:
        problems.append(f"{where}: action_id length")
    if len(button.get("url", "")) > 3000:
        problems.append(f"{where}: url > 3000")
    if button.get("style") not in (None, "primary", "danger"):
        problems.append(f"{where}: style {button.get('style')!r}")
    confirm = button.get("confirm")
    if confirm is not None:
        problems += _text_problems(confirm.get("title"), 100, f"{where}.confirm.title", plain_only=True)
        problems += _text_problems(confirm.get("text"), 300, f"{where}.confirm.text")
        problems += _text_problems(confirm.get("confirm"), 30, f"{where}.confirm.confirm", plain_only=True)
        problems += _text_problems(confirm.get("deny"), 30, f"{where}.confirm.deny", plain_only=True)
    return problems


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    status: int
    answer: dict[str, Any]


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    broadcast: bool = False
    edits: list[dict[str, Any]] = field(default_factory=list)

    def buttons(self) -> dict[str, dict[str, Any]]:
        return {
            element["action_id"]: element
            for block in self.blocks or []
            if block.get("type") == "actions"
            for element in block["elements"]
        }

    def all_text(self) -> str:
        parts = [self.text]
        for block in self.blocks or []:
            parts.append(json.dumps(block, ensure_ascii=False))
        return "\n".join(parts)


@dataclass
class SlackWorld:
    """What the stand-in knows about the workspace, and can be told to do wrong."""

    channels: set[str] = field(default_factory=lambda: {"C0DRFLOW"})
    not_in_channel: set[str] = field(default_factory=set)
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # id -> display name
    rate_limited: dict[str, tuple[int, int]] = field(default_factory=dict)  # method -> (calls left, retry)
    failing: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (calls left, error)


class SlackStandIn:
    def __init__(self) -> None:
        self.world = SlackWorld()
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.invalid_blocks: list[list[str]] = []
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._clock = int(time.time())
        self.base_url = ""
        # Socket Mode
        self.ws_url: str | None = None
        self.acks: dict[str, threading.Event] = {}
        self.connected = threading.Event()
        self._ws_loop: asyncio.AbstractEventLoop | None = None
        self._ws_connections: list[ServerConnection] = []

    # -------------------------------------------------------------------------------- test controls
    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def rate_limit(self, method: str, calls: int, retry_after: int = 1) -> None:
        self.world.rate_limited[method] = (calls, retry_after)

    def fail(self, method: str, calls: int, error: str) -> None:
        self.world.failing[method] = (calls, error)

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def top_level(self, channel: str = "C0DRFLOW") -> list[Message]:
        with self._lock:
            return [m for m in self.messages.values() if m.channel == channel and m.thread_ts is None]

    def thread(self, ts: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages.values() if m.thread_ts == ts]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Any:
        """Poll ``predicate()`` until it returns something truthy (blocking; call via asyncio.to_thread)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the stand-in never saw it within {timeout}s; calls: {self.summary()}")
            time.sleep(0.02)

    def summary(self) -> list[str]:
        with self._lock:
            return [f"{c.method} -> {c.status} {c.answer.get('error', '')}".strip() for c in self.calls]

    # ------------------------------------------------------------------------------------- interactions
    def response_url(self) -> str:
        return f"{self.base_url}/actions/{TEAM}/{uuid.uuid4().hex[:12]}/{uuid.uuid4().hex}"

    def block_actions(
        self, message: Message, action_id: str, user: str, username: str | None = None
    ) -> dict[str, Any]:
        """The ``block_actions`` payload Slack sends when ``user`` clicks a button of ``message``."""
        button = message.buttons()[action_id]
        action_ts = f"{time.time():.6f}"
        return {
            "type": "block_actions",
            "user": {"id": user, "username": username or user.lower(), "name": username or user.lower(),
                     "team_id": TEAM},
            "api_app_id": APP_ID,
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                          "is_ephemeral": False},
            "trigger_id": f"{next(self._ts)}.{TEAM}.{uuid.uuid4().hex}",
            "team": {"id": TEAM, "domain": "drflow-test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": message.channel, "name": "dr-approvals"},
            "message": {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks,
                        "bot_id": "B0DRFLOW", "user": "U0DRFLOWBOT"},
            "state": {"values": {}},
            "response_url": self.response_url(),
            "actions": [{**button, "block_id": "drflow_gate", "action_ts": action_ts}],
        }  # fmt: skip

    # ---------------------------------------------------------------------------------- the Web API
    def handle(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            status, answer, headers = self._answer(method, args, token)
            self.calls.append(Call(method, args, token, status, answer))
            return status, answer, headers

    def _answer(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        world = self.world
        if method in world.rate_limited:
            left, retry = world.rate_limited[method]
            if left > 0:
                world.rate_limited[method] = (left - 1, retry)
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry)}
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        if method in world.failing:
            left, error = world.failing[method]
            if left > 0:
                world.failing[method] = (left - 1, error)
                return 200, {"ok": False, "error": error}, {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        return 200, handler(args), {}

    def _channel_error(self, channel: str | None) -> dict[str, Any] | None:
        if channel not in self.world.channels:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.world.not_in_channel:
            return {"ok": False, "error": "not_in_channel"}
        return None

    def _blocks(self, args: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        problems = block_kit_problems(blocks, args.get("text"))
        if problems:
            self.invalid_blocks.append(problems)
            return None, {"ok": False, "error": "invalid_blocks", "errors": problems}
        return blocks, None

    def _next_ts(self) -> str:
        return f"{self._clock}.{next(self._ts):06d}"

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        error = self._channel_error(channel)
        if error:
            return error
        blocks, invalid = self._blocks(args)
        if invalid:
            return invalid
        if not args.get("text") and not blocks:
            return {"ok": False, "error": "no_text"}
        thread_ts = args.get("thread_ts")
        if thread_ts is not None and thread_ts not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        ts = self._next_ts()
        message = Message(channel=str(channel), ts=ts, text=args.get("text") or "", blocks=blocks,
                          thread_ts=thread_ts, broadcast=bool(args.get("reply_broadcast")))  # fmt: skip
        self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": self._shape(message)}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        error = self._channel_error(channel)
        if error:
            return error
        message = self.messages.get(args.get("ts") or "")
        if message is None or message.channel != channel:
            return {"ok": False, "error": "message_not_found"}
        blocks, invalid = self._blocks(args)
        if invalid:
            return invalid
        message.edits.append({"text": message.text, "blocks": message.blocks})
        message.text = args.get("text") or message.text
        if "blocks" in args:
            message.blocks = blocks
        return {"ok": True, "channel": channel, "ts": message.ts, "text": message.text,
                "message": self._shape(message)}  # fmt: skip

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        error = self._channel_error(args.get("channel"))
        if error:
            return error
        _, invalid = self._blocks(args)
        if invalid:
            return invalid
        self.ephemerals.append({"via": "chat.postEphemeral", "user": args.get("user"),
                                "channel": args.get("channel"), "text": args.get("text")})  # fmt: skip
        return {"ok": True, "message_ts": self._next_ts()}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if group not in self.world.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.world.usergroups[group])}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user")
        if user not in self.world.users:
            return {"ok": False, "error": "user_not_found"}
        name = self.world.users[user]
        return {
            "ok": True,
            "user": {"id": user, "team_id": TEAM, "name": name.lower(), "real_name": name,
                     "profile": {"display_name": name, "real_name": name}, "is_bot": False},
        }  # fmt: skip

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.ws_url is None:
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"ok": True, "url": f"{self.ws_url}/link/?ticket={uuid.uuid4()}&app_id={APP_ID}"}

    def _shape(self, message: Message) -> dict[str, Any]:
        shaped: dict[str, Any] = {"type": "message", "text": message.text, "ts": message.ts,
                                  "bot_id": "B0DRFLOW", "user": "U0DRFLOWBOT"}  # fmt: skip
        if message.blocks is not None:
            shaped["blocks"] = message.blocks
        if message.thread_ts is not None:
            shaped["thread_ts"] = message.thread_ts
        return shaped

    def response(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.ephemerals.append({"via": "response_url", "path": path, **body})

    # ------------------------------------------------------------------------------------ Socket Mode
    def send_interactive(self, payload: dict[str, Any]) -> str:
        """Push an ``interactive`` envelope to every connected client; returns its envelope id."""
        assert self._ws_loop is not None, "Socket Mode is not running"
        envelope_id = str(uuid.uuid4())
        self.acks[envelope_id] = threading.Event()
        envelope = {"envelope_id": envelope_id, "type": "interactive", "payload": payload,
                    "accepts_response_payload": False, "retry_attempt": 0, "retry_reason": ""}  # fmt: skip
        asyncio.run_coroutine_threadsafe(self._broadcast(json.dumps(envelope)), self._ws_loop).result(5)
        return envelope_id

    async def _broadcast(self, text: str) -> None:
        for connection in list(self._ws_connections):
            await connection.send(text)

    async def _serve_socket(self, connection: ServerConnection) -> None:
        self._ws_connections.append(connection)
        await connection.send(json.dumps({"type": "hello", "num_connections": 1,
                                          "connection_info": {"app_id": APP_ID},
                                          "debug_info": {"host": "standin", "approximate_connection_time": 3600}}))  # fmt: skip
        self.connected.set()
        try:
            async for raw in connection:
                message = json.loads(raw)
                envelope = message.get("envelope_id")
                if envelope in self.acks:
                    self.acks[envelope].set()
        except Exception:  # the client went away; that is all a test needs to know
            pass
        finally:
            self._ws_connections.remove(connection)
            if not self._ws_connections:
                self.connected.clear()

    @contextmanager
    def socket_mode(self) -> Iterator[str]:
        """Run the websocket server (on its own thread and event loop) while the block runs."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop: asyncio.Future[None] | None = None

        async def main() -> None:
            nonlocal stop
            stop = loop.create_future()
            async with serve(self._serve_socket, "127.0.0.1", 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                self.ws_url = f"ws://127.0.0.1:{port}"
                ready.set()
                await stop

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(5)
        self._ws_loop = loop
        try:
            yield str(self.ws_url)
        finally:
            loop.call_soon_threadsafe(lambda: stop.set_result(None) if stop and not stop.done() else None)
            thread.join(5)
            loop.close()
            self.ws_url = None
            self._ws_loop = None


@contextmanager
def slack_standin() -> Iterator[SlackStandIn]:
    """The stand-in's HTTP side on 127.0.0.1: ``/api/<method>`` and ``/actions/...`` (response_urls)."""
    standin = SlackStandIn()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlparse(self.path)
            args = {k: v[0] for k, v in parse_qs(url.query).items()}
            self._api(url.path, args)

        def do_POST(self) -> None:
            url = urlparse(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path.startswith("/actions/"):
                standin.response(url.path, json.loads(raw or b"{}"))
                self._send(200, {"ok": True}, {})
                return
            args: dict[str, Any] = {k: v[0] for k, v in parse_qs(url.query).items()}
            if raw:
                if (self.headers.get("Content-Type") or "").startswith("application/json"):
                    args.update(json.loads(raw))
                else:
                    args.update({k: v[0] for k, v in parse_qs(raw.decode()).items()})
            self._api(url.path, args)

        def _api(self, path: str, args: dict[str, Any]) -> None:
            if not path.startswith("/api/"):
                self._send(404, {"ok": False, "error": "not_found"}, {})
                return
            auth = self.headers.get("Authorization") or ""
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.pop("token", None)
            status, answer, headers = standin.handle(path.removeprefix("/api/"), args, token)
            self._send(status, answer, headers)

        def _send(self, status: int, answer: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    standin.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------------------------------ signing
def signed(
    payload: dict[str, Any], secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A body and headers exactly as Slack sends an interaction to the Request URL."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }


# ------------------------------------------------------------------------------------ runbook & workspace
PLAIN_APPROVALS = "approvals:\n  approvers: [bob, carol]\n  separation_of_duties: true\n  timeout: 30m\n"
SLACK_APPROVALS = """\
approvals:
  approvers: [bob, carol]
  slack:
    channel: {channel}
    approvers: [U02BOB]
    usergroup: S0ONCALL
    escalation_group: S0LEADS
    identities: {{U01ALICE: alice, U02BOB: bob}}
  separation_of_duties: true
  timeout: 30m
{extra}"""


def approve_in_slack(runbook: Path, channel: str = "C0DRFLOW", extra: str = "") -> None:
    """Give a tests/support/failover.py runbook Slack approvals: U02BOB by id; alice and carol (U03CAROL)
    as members of the on-call group S0ONCALL; alice is U01ALICE in Slack (she requests the failovers)."""
    text = runbook.read_text()
    assert text.count(PLAIN_APPROVALS) == 1, "tests/support/failover.py RUNBOOK changed its approvals"
    runbook.write_text(text.replace(PLAIN_APPROVALS, SLACK_APPROVALS.format(channel=channel, extra=extra)))


def populate(standin: SlackStandIn) -> SlackStandIn:
    standin.world.usergroups = {"S0ONCALL": ["U01ALICE", "U03CAROL"], "S0LEADS": ["U07LEAD"]}
    standin.world.users = {"U01ALICE": "Alice", "U02BOB": "Bob", "U03CAROL": "Carol", "U09MALLORY": "Mallory"}
    return standin


def decoded_history(history_json: dict[str, Any]) -> str:
    """A history as text with every payload decoded, to search it for what must never be there."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
                    except ValueError:
                        parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            parts.append(node)

    walk(history_json)
    return "\n".join(parts)
