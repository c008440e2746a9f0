"""Connection settings: flags over TEMPORAL_* variables over defaults; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.connection import ConnectionSettingsError, TemporalSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "TEMPORAL_TLS_CERT",
        "TEMPORAL_TLS_KEY",
        "TEMPORAL_TLS_CA",
        "TEMPORAL_API_KEY",
        "TEMPORAL_TLS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_local_dev_server() -> None:
    settings = TemporalSettings.resolve()
    assert (settings.address, settings.namespace, settings.tls) == ("localhost:7233", "default", False)
    assert settings.describe() == "localhost:7233 namespace default (plaintext)"


def test_environment_configures_temporal_cloud_with_an_api_key_that_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "eu-west-1.aws.api.temporal.io:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "sre.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "very-secret-key")
    settings = TemporalSettings.resolve()
    assert settings.tls is True and settings.api_key == "very-secret-key"
    assert settings.describe() == "eu-west-1.aws.api.temporal.io:7233 namespace sre.a1b2c (API key)"
    assert "very-secret-key" not in repr(settings)


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "from-env:7233")
    assert TemporalSettings.resolve(address="from-flag:7233").address == "from-flag:7233"


def test_mtls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("cert")
    with pytest.raises(ConnectionSettingsError, match="certificate and its key go together"):
        TemporalSettings.resolve(tls_cert=str(cert))
    with pytest.raises(ConnectionSettingsError, match=f"TLS file {key} does not exist"):
        TemporalSettings.resolve(tls_cert=str(cert), tls_key=str(key))
    key.write_text("key")
    settings = TemporalSettings.resolve(tls_cert=str(cert), tls_key=str(key))
    assert settings.tls and settings.describe().endswith("(mTLS)")
