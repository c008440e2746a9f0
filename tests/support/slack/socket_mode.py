"""The stand-in's Socket Mode: a websocket server slack-sdk's built-in Socket Mode client connects to unchanged.

``apps.connections.open`` (app token) returns the ``ws://127.0.0.1`` URL of this server (the ``websockets``
package), which greets with ``hello``, pushes ``interactive`` envelopes and records the client's
acknowledgements.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from tests.support.slack.workspace import APP_ID


class SocketModeServer:
    """The Socket Mode side of the stand-in (its base class): serving only inside ``socket_mode()``."""

    def __init__(self) -> None:
        self.ws_url: str | None = None
        self.acks: dict[str, threading.Event] = {}
        self.connected = threading.Event()
        self._ws_loop: asyncio.AbstractEventLoop | None = None
        self._ws_connections: list[ServerConnection] = []

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
