"""``drflow codec-server``: decrypt payloads for the Temporal Web UI, next to it, with the workers' keys."""

from __future__ import annotations

import logging
import signal
from typing import Any

import click

from workers.cli.common import EXIT_OK, Failure, configure_logging

UI_ORIGINS_ENV = "DRFLOW_CODEC_UI_ORIGINS"
AUTH_ENV = "DRFLOW_CODEC_AUTH"


@click.command("codec-server")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="DRFLOW_CODEC_HOST")
@click.option("--port", default=8888, show_default=True, type=int, envvar="DRFLOW_CODEC_PORT")
@click.option(
    "--ui-origin",
    "origins",
    multiple=True,
    help="the Web UI's origin allowed by CORS, e.g. http://localhost:8233 (repeatable) "
    f"[env {UI_ORIGINS_ENV}, comma-separated]",
)
@click.option(
    "--auth",
    "auth_ref",
    envvar=AUTH_ENV,
    help="env:VARIABLE or file:/path holding the whole Authorization header value the UI must send "
    f"(e.g. 'Bearer ...'); without it, anyone who can reach the port may decode [env {AUTH_ENV}]",
)
def codec_server(host: str, port: int, origins: tuple[str, ...], auth_ref: str | None, **_: Any) -> int:
    """Serve /decode and /encode for the Temporal Web UI (its codec endpoint), with DRFLOW_CODEC_KEYS.

    Point the UI at it: `temporal server start-dev --ui-codec-endpoint http://HOST:PORT`, the UI server's
    `codec.endpoint` setting, or the UI's own Data Encoder settings (per browser).
    """
    import os

    from temporalio.exceptions import ApplicationError

    from activities.codec import KEYS_ENV, CodecError, codec_from_env
    from activities.secrets import resolve_secret
    from workers.codec_server import CodecServer, CodecServerConfig

    try:
        codec = codec_from_env()
    except CodecError as err:
        raise Failure(str(err)) from err
    if codec is None:
        raise Failure(f"the codec is off: set {KEYS_ENV} (and DRFLOW_CODEC_KEY_ID) to the workers' keys")
    allowed = list(origins) or [o for o in os.environ.get(UI_ORIGINS_ENV, "").split(",") if o.strip()]
    if not allowed:
        raise Failure(f"name the Web UI's origin: --ui-origin http://localhost:8233 (or {UI_ORIGINS_ENV})")
    auth = None
    if auth_ref:
        if not auth_ref.startswith(("env:", "file:")):
            raise Failure("--auth must be a secret reference (env:VARIABLE or file:/path), not the value")
        try:
            auth = resolve_secret(auth_ref)
        except ApplicationError as err:
            raise Failure(f"--auth: {err.message}") from err
    configure_logging(logging.INFO)
    try:
        server = CodecServer((host, port), codec, CodecServerConfig.of(allowed, auth))
    except OSError as err:
        raise Failure(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: serve_forever ends
    logging.getLogger("drflow.codec_server").info(
        "codec server on %s for %s (key id %s for /encode, %d key ids decode; auth header %s)",
        server.url, ", ".join(sorted(CodecServerConfig.of(allowed).origins)), codec.key_id,
        len(codec.keys.keys), "required" if auth else "not required",
    )  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK
