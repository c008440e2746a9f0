"""Real HTTP servers on loopback addresses, standing in for a region's application."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class AppBehaviour:
    """What the fake application answers; tests flip it while the server runs."""

    status: int = 200
    body: dict[str, object] = field(default_factory=lambda: {"status": "ok"})
    delay: float = 0.0
    requests: int = 0
    required_headers: dict[str, str] = field(default_factory=dict)
    """Headers a request must carry with exactly these values, or it is answered 401."""
    authorized: int = 0
    """Requests that carried every required header."""
    echo_headers: bool = False
    """Answer with the request's headers in the body, as some debug endpoints do."""


@dataclass
class RunningApp:
    host: str
    port: int
    behaviour: AppBehaviour

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def serve_app(host: str = "127.0.0.1", behaviour: AppBehaviour | None = None) -> Iterator[RunningApp]:
    state = behaviour or AppBehaviour()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            if state.delay:
                time.sleep(state.delay)
            status, body = state.status, state.body
            if any(self.headers.get(name) != value for name, value in state.required_headers.items()):
                status, body = 401, {"status": "unauthorized"}
            elif state.required_headers:
                state.authorized += 1
            if state.echo_headers:
                body = {**body, "headers": dict(self.headers.items())}
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test); nothing to answer

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningApp(host=host, port=server.server_address[1], behaviour=state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
