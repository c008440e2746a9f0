"""The stand-in's Web API over HTTP, its ``response_url``s, and the clicks Slack would send.

The Web API answers on the real paths (``/api/chat.postMessage`` …) with the real JSON shapes, checks the
bearer token like Slack does (``invalid_auth``), refuses blocks outside Block Kit's limits
(``invalid_blocks``), and can answer HTTP 429 with ``Retry-After`` for the next N calls of a method. It keeps
every call and every message, with its edits, so tests read what Slack users would see. Socket Mode comes
from its base class (``socket_mode.SocketModeServer``).
"""

from __future__ import annotations

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
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from tests.support.slack.block_kit import block_kit_problems
from tests.support.slack.socket_mode import SocketModeServer
from tests.support.slack.workspace import APP_ID, APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, TEAM


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
    deactivated: set[str] = field(default_factory=set)  # users.info says ``deleted: true``, as Slack does
    rate_limited: dict[str, tuple[int, int]] = field(default_factory=dict)  # method -> (calls left, retry)
    failing: dict[str, tuple[int, str]] = field(default_factory=dict)  # method -> (calls left, error)


class SlackStandIn(SocketModeServer):
    def __init__(self) -> None:
        super().__init__()
        self.world = SlackWorld()
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.invalid_blocks: list[list[str]] = []
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._clock = int(time.time())
        self.base_url = ""

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
                     "profile": {"display_name": name, "real_name": name}, "is_bot": False,
                     "deleted": user in self.world.deactivated},
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


def populate(standin: SlackStandIn) -> SlackStandIn:
    """The people that ``workspace.approve_in_slack``'s runbook approvals name, and their user groups."""
    standin.world.usergroups = {"S0ONCALL": ["U01ALICE", "U03CAROL"], "S0LEADS": ["U07LEAD"]}
    standin.world.users = {"U01ALICE": "Alice", "U02BOB": "Bob", "U03CAROL": "Carol", "U09MALLORY": "Mallory"}
    return standin


@contextmanager
def slack_for_worker(monkeypatch: Any) -> Iterator[SlackStandIn]:
    """The stand-in, with the environment a worker reads pointed at it (API URL, bot token; no token file):
    what every test that lets a worker talk to Slack starts from."""
    with slack_standin() as running:
        monkeypatch.setenv("SLACK_API_URL", running.api_url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
        monkeypatch.delenv("SLACK_BOT_TOKEN_FILE", raising=False)
        yield running
