"""One region's app in the sandbox: liveness on /healthz, a real write through its database on /healthz/deep.

The deep check passes only where the region's database is the writable primary, so a failover shows up in
health checks exactly as it would for a real service: the old region fails (fenced), the new one passes
once promoted. ``/`` is the page users (and a failback's canary, through HAProxy) get: a read on the
region's database, which a standby answers too, naming the region so the canary can measure the split.
``/write`` (POST or GET) is the users' write: it commits a row through the app's *writer* connection. With
``--writer-ports`` that is a libpq multi-host connection string over every region's node with
``target_session_attrs=read-write``, so it reaches the primary wherever it is (the runbook declares it in
``writes.follow_primary``); without, it writes through the region's own database, which a standby refuses.
Run: ``python -m workers.sandbox.app --region region-a --listen 127.0.1.1:18080 ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from workers.sandbox.postgres import PROBE_TABLE

log = logging.getLogger("drflow.sandbox.app")

# psycopg, like libpq, treats anything below 2 s as 2 s; a down database on loopback refuses at once anyway.
CONNECT_TIMEOUT = 1
STATEMENT_TIMEOUT_MS = 2000
_ERROR_EXCERPT = 300
# Rows kept per region: the deep check writes one per call, forever.
_KEEP_ROWS = 1000


@dataclass(frozen=True)
class AppConfig:
    region: str
    host: str
    port: int
    dsn_host: str
    dsn_port: int
    dbname: str
    user: str
    password_file: Path
    writer_ports: tuple[int, ...] = ()


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a canary analysis opens up to 32 connections at once, and SYNs
    # past the backlog are dropped and retried by the client only after a second, which reads as timeouts.
    request_queue_size = 128

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        # One writer session, kept as an app's pool keeps it: a multi-host connect may try a standby first
        # and authenticate twice, too slow for every request of a canary under load.
        self._writer: psycopg.Connection[tuple[Any, ...]] | None = None
        self._writer_lock = threading.Lock()
        super().__init__((config.host, config.port), HealthHandler)

    def _connect(self, writer: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
        """The region's own database; ``writer``: the node that takes writes, when the app follows it."""
        config = self.config
        multi = writer and bool(config.writer_ports)
        ports = config.writer_ports if multi else (config.dsn_port,)
        return psycopg.connect(
            host=",".join([config.dsn_host] * len(ports)),
            port=",".join(str(p) for p in ports),
            target_session_attrs="read-write" if multi else "any",
            dbname=config.dbname,
            user=config.user,
            password=config.password_file.read_text().strip(),
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"sandbox-app-{config.region}",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )

    def read_page(self) -> tuple[int, dict[str, Any]]:
        """A cheap read on the region's database: works on a read-only standby, fails when it is down."""
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except (psycopg.Error, OSError) as err:
            return 503, self._failing(_describe(err))
        database = "standby" if row is not None and row[0] else "primary"
        return 200, {"status": "ok", "region": self.config.region, "database": database}

    def deep_check(self) -> tuple[int, dict[str, Any]]:
        """INSERT a row and read it back in one transaction: passes only on a writable primary."""
        config = self.config
        try:
            with self._connect() as conn, conn.transaction():
                inserted = conn.execute(
                    f"INSERT INTO {PROBE_TABLE} (region) VALUES (%s) RETURNING id", (config.region,)
                ).fetchone()
                row_id = inserted[0] if inserted else None
                read = conn.execute(f"SELECT region FROM {PROBE_TABLE} WHERE id = %s", (row_id,)).fetchone()
                if row_id is None or read is None or read[0] != config.region:
                    return 503, self._failing(f"the row written ({row_id}) did not read back")
                conn.execute(
                    f"DELETE FROM {PROBE_TABLE} WHERE region = %s AND id < %s",
                    (config.region, row_id - _KEEP_ROWS),
                )
        except (psycopg.Error, OSError) as err:
            return 503, self._failing(_describe(err))
        return 200, {"status": "ok", "region": config.region, "database": "writable"}

    def write(self) -> tuple[int, dict[str, Any]]:
        """Commit a row through the writer session: what a user's write does, whichever node it reaches.

        A kept session that fails (its node was fenced, or is read-only now) is dropped and the write tried
        once more on a fresh one, which libpq sends to the node that is read-write now.
        """
        with self._writer_lock:
            for attempt in (1, 2):
                fresh = self._writer is None
                try:
                    if self._writer is None:
                        self._writer = self._connect(writer=True)
                        self._writer.autocommit = True  # transaction() below is the one BEGIN/COMMIT
                    return 200, self._insert(self._writer)
                except (psycopg.Error, OSError) as err:
                    self._drop_writer()
                    if fresh or attempt == 2:
                        return 503, self._failing(_describe(err))
            raise AssertionError("unreachable")

    def _insert(self, conn: psycopg.Connection[tuple[Any, ...]]) -> dict[str, Any]:
        config = self.config
        with conn.transaction():
            inserted = conn.execute(
                f"INSERT INTO {PROBE_TABLE} (region) VALUES (%s) RETURNING id", (config.region,)
            ).fetchone()
            if inserted is not None:
                conn.execute(
                    f"DELETE FROM {PROBE_TABLE} WHERE region = %s AND id < %s",
                    (config.region, inserted[0] - _KEEP_ROWS),
                )
        return {"status": "ok", "region": config.region, "database": "writable", "port": conn.info.port}

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.close()
            self._writer = None

    def _failing(self, error: str) -> dict[str, Any]:
        return {"status": "failing", "region": self.config.region, "error": error}


class HealthHandler(BaseHTTPRequestHandler):
    server: HealthServer
    server_version = "drflow-sandbox-app"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._respond(body=True, post=True)

    def _respond(self, body: bool, post: bool = False) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/write":
            status, payload = self.server.write()
        elif post:
            status, payload = 405, {"status": "method-not-allowed", "path": self.path}
        elif path == "":
            status, payload = self.server.read_page()
        elif path == "/healthz":
            status, payload = 200, {"status": "ok", "region": self.server.config.region}
        elif path == "/healthz/deep":
            status, payload = self.server.deep_check()
        else:
            status, payload = 404, {"status": "not-found", "path": self.path}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.removeprefix("connection failed: ")
    return text if len(text) <= _ERROR_EXCERPT else text[:_ERROR_EXCERPT] + "..."


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _ports(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not PORT,PORT,...") from None


def parse_args(argv: list[str] | None = None) -> AppConfig:
    parser = argparse.ArgumentParser(prog="python -m workers.sandbox.app", description=__doc__)
    parser.add_argument("--region", required=True)
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT, e.g. 127.0.1.1:18080")
    parser.add_argument("--dsn-host", default="127.0.0.1")
    parser.add_argument("--dsn-port", type=int, required=True)
    parser.add_argument("--dbname", default="app")
    parser.add_argument("--user", default="drflow")
    parser.add_argument("--password-file", required=True, type=Path)
    parser.add_argument(
        "--writer-ports",
        type=_ports,
        default=(),
        help="PORT,PORT,...: /write goes to whichever of these nodes is read-write (libpq multi-host)",
    )
    args = parser.parse_args(argv)
    host, port = args.listen
    return AppConfig(
        region=args.region,
        host=host,
        port=port,
        dsn_host=args.dsn_host,
        dsn_port=args.dsn_port,
        dbname=args.dbname,
        user=args.user,
        password_file=args.password_file.absolute(),
        writer_ports=args.writer_ports,
    )


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    try:
        server = HealthServer(config)
    except OSError as err:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, err.strerror or err)
        sys.exit(1)
    log.info(
        "app %s listening on http://%s:%s (database %s:%s/%s, writes to %s)",
        config.region,
        config.host,
        config.port,
        config.dsn_host,
        config.dsn_port,
        config.dbname,
        f"the read-write one of ports {config.writer_ports}" if config.writer_ports else "its own database",
    )
    with server:
        try:
            server.serve_forever(poll_interval=0.2)
        except (KeyboardInterrupt, SystemExit):
            log.info("app %s stopping", config.region)


if __name__ == "__main__":
    main()
