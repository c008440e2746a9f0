"""Serving the gateway: an HTTP server (``/healthz`` always, the Request URL) and the Socket Mode listener.

The HTTP server runs on its own thread and hands each request to the event loop of ``running_gateway``;
the Socket Mode listener (slack-sdk's built-in client, threads too) acknowledges each envelope at once, then
hands its click to the same loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from temporalio.client import Client

from workers.gateway.approvals import ACTIONS_PATH, ApprovalGateway
from workers.gateway.config import GatewayConfig

log = logging.getLogger("drflow.gateway")

HEALTH_PATH = "/healthz"
MAX_BODY = 1 << 20


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
