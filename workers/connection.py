"""How drflow reaches Temporal: flags first, then the standard TEMPORAL_* environment, then local defaults.

Works unchanged against the local dev server, a self-hosted cluster with mTLS, and Temporal Cloud (API key).
Every Client drflow builds gets its data converter here, so the payload codec (``DRFLOW_CODEC_KEYS``, see
``activities.codec``) is on for the worker, the CLI and the gateway alike, or for none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from activities.codec import CodecError, EncryptionCodec, converter_from_env
from workers.telemetry import tracing_interceptors

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"


class ConnectionSettingsError(ValueError):
    """The connection settings contradict each other or name files that cannot be read."""


@dataclass(frozen=True)
class TemporalSettings:
    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls: bool = False
    api_key: str | None = field(default=None, repr=False)  # never printed, never logged
    data_converter: DataConverter = field(default_factory=converter_from_env, repr=False, compare=False)

    @classmethod
    def resolve(
        cls,
        address: str | None = None,
        namespace: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        api_key: str | None = None,
    ) -> TemporalSettings:
        env = os.environ
        cert = tls_cert or env.get("TEMPORAL_TLS_CERT")
        key = tls_key or env.get("TEMPORAL_TLS_KEY")
        ca = tls_ca or env.get("TEMPORAL_TLS_CA")
        secret = api_key or env.get("TEMPORAL_API_KEY")
        if bool(cert) != bool(key):
            raise ConnectionSettingsError(
                "a TLS client certificate and its key go together: set both or neither"
            )
        try:
            converter = converter_from_env(env)
        except CodecError as err:
            raise ConnectionSettingsError(str(err)) from err
        settings = cls(
            data_converter=converter,
            address=address or env.get("TEMPORAL_ADDRESS") or DEFAULT_ADDRESS,
            namespace=namespace or env.get("TEMPORAL_NAMESPACE") or DEFAULT_NAMESPACE,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            tls_ca=Path(ca) if ca else None,
            tls=bool(cert or ca or secret) or env.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes"),
            api_key=secret or None,
        )
        for path in (settings.tls_cert, settings.tls_key, settings.tls_ca):
            if path is not None and not path.is_file():
                raise ConnectionSettingsError(f"TLS file {path} does not exist or is not a file")
        return settings

    def tls_config(self) -> TLSConfig | bool:
        if not self.tls:
            return False
        return TLSConfig(
            client_cert=self.tls_cert.read_bytes() if self.tls_cert else None,
            client_private_key=self.tls_key.read_bytes() if self.tls_key else None,
            server_root_ca_cert=self.tls_ca.read_bytes() if self.tls_ca else None,
        )

    async def connect(self, runtime: Runtime | None = None) -> Client:
        """``runtime``: one serving metrics (``workers.telemetry.metrics_runtime``); traces follow the env."""
        return await Client.connect(
            self.address,
            namespace=self.namespace,
            tls=self.tls_config(),
            api_key=self.api_key,
            data_converter=self.data_converter,
            interceptors=tracing_interceptors(),
            runtime=runtime,
        )

    def describe(self) -> str:
        auth = "API key" if self.api_key else "mTLS" if self.tls_cert else "TLS" if self.tls else "plaintext"
        codec = self.data_converter.payload_codec
        encrypted = ""
        if isinstance(codec, EncryptionCodec):
            encrypted = f", payloads encrypted with key id {codec.key_id}"
        return f"{self.address} namespace {self.namespace} ({auth}{encrypted})"
