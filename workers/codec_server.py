"""The codec server: the Temporal Web UI sends it encrypted payloads and shows what comes back.

Why a separate process: the UI (and Temporal itself) never holds the keys. The person's browser posts the
payloads it is about to show to ``/decode`` (``/encode`` when they start or signal a run from the UI), so
only people who can reach this server, from an allowed UI origin and with the auth header when one is set,
see plaintext. The wire format is Temporal's: ``{"payloads": [...]}`` in protobuf JSON, both ways.

CORS: the UI's origin (``--ui-origin``) is echoed on the preflight and the answer, credentials allowed;
any other origin gets no CORS headers, so browsers refuse to hand its pages the answer. Preflights carry no
auth header (browsers never send one), so only POSTs are checked against it.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from activities.codec import CodecError, EncryptionCodec

log = logging.getLogger("drflow.codec_server")
MAX_BODY = 16 * 1024 * 1024  # a UI page decodes a history's payloads in batches, far below this
ALLOWED_HEADERS = "content-type, x-namespace, authorization"


@dataclass(frozen=True)
class CodecServerConfig:
    origins: frozenset[str]
    auth: str | None = field(default=None, repr=False)  # the whole Authorization header value; never logged

    @classmethod
    def of(cls, origins: Sequence[str], auth: str | None = None) -> CodecServerConfig:
        return cls(frozenset(o.strip().rstrip("/") for o in origins if o.strip()), auth or None)


class CodecServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], codec: EncryptionCodec, config: CodecServerConfig) -> None:
        self.codec, self.config = codec, config
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> threading.Thread:
        """Serve on a thread of its own (tests, or a caller with its own loop); ``shutdown()`` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="codec-server", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: CodecServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # method and path only, never a body
        log.debug("%s %s", self.command, self.path)

    def _origin(self) -> str | None:
        origin = (self.headers.get("Origin") or "").rstrip("/")
        return origin if origin in self.server.config.origins else None

    def _send(self, status: int, body: dict[str, Any], *, preflight: bool = False) -> None:
        data = json.dumps(body).encode() if body else b""
        self.send_response(status)
        origin = self._origin()
        if origin is not None:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            if preflight:
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
                self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Vary", "Origin")
        self.send_header("Cache-Control", "no-store")  # decoded payloads are never cached by a browser
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_OPTIONS(self) -> None:
        if self._origin() is None:
            self._send(403, {"error": "origin not allowed"})
            return
        self._send(204, {}, preflight=True)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "POST /decode or /encode"})

    def do_POST(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route not in ("/decode", "/encode"):
            self.close_connection = True
            self._send(404, {"error": "POST /decode or /encode"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length <= 0 or length > MAX_BODY:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._send(400, {"error": f"a JSON body of 1 to {MAX_BODY} bytes is required"})
            return
        body = self.rfile.read(length)  # read even when refused: the connection stays usable (keep-alive)
        expected = self.server.config.auth
        given = self.headers.get("Authorization") or ""
        if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("refused %s from %s: missing or wrong Authorization", route, self.client_address[0])
            self._send(401, {"error": "missing or wrong Authorization header"})
            return
        try:
            payloads = json_format.Parse(body, Payloads())
        except json_format.ParseError as err:
            self._send(400, {"error": f"not Temporal payloads JSON: {err}"})
            return
        codec = self.server.codec
        try:
            convert = codec.decrypt if route == "/decode" else codec.encrypt
            done = [convert(p) for p in payloads.payloads]
        except CodecError as err:
            self._send(400, {"error": str(err)})
            return
        self._send(200, json_format.MessageToDict(Payloads(payloads=done)))
