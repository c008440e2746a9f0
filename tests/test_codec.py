"""Payload encryption: a failover run with the codec leaves Temporal only ciphertext; drflow reads it back.

Real components throughout: the dev server, the real worker and a stateless failover (BIND, region apps),
the ``temporal`` CLI from the pip wheel, the ``drflow`` console script, and the codec server over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.codec import (
    KEY_ID_ENV,
    KEY_ID_METADATA,
    KEYS_ENV,
    CodecError,
    CodecKeys,
    EncryptionCodec,
    converter_for,
    decode_history,
    encrypted_key_ids,
)
from tests.support.failover import stateless_service, wait_for_archive, wait_for_gate
from tests.support.temporal import venv_binary
from tests.test_cli_check import drflow, target
from workers.cli.main import cli
from workers.codec_server import CodecServer, CodecServerConfig
from workers.connection import ConnectionSettingsError, TemporalSettings
from workers.sandbox.named import NamedPair, free_port
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

REASON = "codec drill, reason 7f3a"  # a string of the input that must not be readable in Temporal


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Key id k1, current, in the environment as drflow reads it (and the drflow subprocesses inherit)."""
    values = {"k1": new_key()}
    monkeypatch.setenv("DRFLOW_TEST_CODEC_K1", values["k1"])
    monkeypatch.setenv(KEYS_ENV, "k1=env:DRFLOW_TEST_CODEC_K1")
    monkeypatch.delenv(KEY_ID_ENV, raising=False)
    return values


def codec_of(spec: str, current: str | None = None) -> EncryptionCodec:
    return EncryptionCodec(CodecKeys.parse(spec, current))


def payload_texts(history: WorkflowHistory) -> str:
    """Every payload of the history as text (base64 data decoded), and the raw JSON beside it."""
    found: list[str] = [history.to_json()]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                found.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history.to_json_dict())
    return "\n".join(found)


# ------------------------------------------------------------------------------------------ end to end
async def test_a_failover_with_the_codec_stores_only_ciphertext_and_drflow_reads_it_back(
    dev_env: WorkflowEnvironment, dns_world: NamedPair, tmp_path: Path, task_queue: str,
    keys: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    archive = tmp_path / "archive"
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(archive))
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    settings = TemporalSettings.resolve(address=target(dev_env))
    codec = settings.data_converter.payload_codec
    assert isinstance(codec, EncryptionCodec) and codec.key_id == "k1"
    assert "payloads encrypted with key id k1" in settings.describe()
    client = await settings.connect()  # as the worker, the CLI and the gateway connect
    with stateless_service(runbooks, dns_world) as service:
        async with build_worker(client, runbooks, task_queue=task_queue):
            handle = await client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(
                    service=service.service, target="region-b", reason=REASON, requested_by="alice"
                ),
                id=f"failover-codec-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            gate = await wait_for_gate(client, handle.id)
            assert gate.plan is not None and gate.plan.dns.current.values == [service.region_a.host]
            await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
            report = await handle.result()
            assert report.outcome == "completed", report.messages
            run_dir = archive / handle.id / report.run_id
            await wait_for_archive(run_dir)

    secrets = [service.region_a.host, service.region_b.host, service.record, REASON]
    # Without the codec (a plain client, as anyone with access to the namespace): ciphertext only.
    raw = await dev_env.client.get_workflow_handle(handle.id).fetch_history()
    assert encrypted_key_ids(raw) == {"k1"}
    assert [s for s in secrets if s in payload_texts(raw)] == []
    # The plain `temporal` CLI sees the same.
    process = await asyncio.create_subprocess_exec(
        venv_binary("temporal"), "workflow", "show", "--workflow-id", handle.id, "--address", target(dev_env),
        "--output", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    shown = out.decode()
    exported_file = tmp_path / "shown.json"
    exported_file.write_text(shown)
    cli_history = WorkflowHistory.from_json(handle.id, shown)
    assert [s for s in secrets if s in payload_texts(cli_history)] == []

    # With the keys: decoded, and with a rotated key set (k2 current, k1 still listed) too.
    decoded = await decode_history(raw, codec)
    assert encrypted_key_ids(decoded) == set()
    assert service.region_b.host in payload_texts(decoded) and REASON in payload_texts(decoded)
    monkeypatch.setenv("DRFLOW_TEST_CODEC_K2", new_key())
    rotated = codec_of("k2=env:DRFLOW_TEST_CODEC_K2,k1=env:DRFLOW_TEST_CODEC_K1", "k2")
    assert payload_texts(await decode_history(raw, rotated)) == payload_texts(decoded)

    # The archive keeps decoded payloads; it verifies, exports and replays without the codec's keys.
    archived = json.loads((run_dir / "history.json").read_text())
    assert "binary/encrypted" not in json.dumps(archived)
    for step in (["audit", "verify", str(run_dir)], ["audit", "replay", str(run_dir)]):
        done = await drflow(*step)
        assert done.returncode == 0, done.stdout + done.stderr

    # Export and replay of the encrypted history, from Temporal and from the `temporal` CLI's file.
    for source in (handle.id, str(exported_file)):
        exported = await drflow("audit", "export", source, "--address", target(dev_env))
        assert exported.returncode == 0, exported.stderr
        assert service.region_b.host in exported.stdout and "bob" in exported.stdout
        replayed = await drflow("audit", "replay", source, "--address", target(dev_env))
        assert replayed.returncode == 0 and "reproduced" in replayed.stdout, replayed.stdout + replayed.stderr

    # Without the keys: a clear refusal naming the key id, never "<undecodable payload>" in a report.
    monkeypatch.delenv(KEYS_ENV)
    for source in (handle.id, str(exported_file)):
        refused = await drflow("audit", "export", source, "--address", target(dev_env))
        assert refused.returncode == 1
        assert "encrypted with key id k1" in refused.stderr and KEYS_ENV in refused.stderr, refused.stderr


# ------------------------------------------------------------------------------------------- the keys
def test_rotation_new_payloads_use_the_current_id_and_old_ids_still_decrypt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("K_OLD", new_key())
    monkeypatch.setenv("K_NEW", os.urandom(32).hex())  # hex is accepted as well as base64
    plain = pydantic_data_converter.payload_converter.to_payloads([{"host": "10.1.2.3"}])[0]
    old = codec_of("old=env:K_OLD")
    sealed_old = old.encrypt(plain)
    assert sealed_old.metadata[KEY_ID_METADATA] == b"old" and b"10.1.2.3" not in sealed_old.data

    both = codec_of("old=env:K_OLD,new=env:K_NEW", "new")
    assert both.decrypt(sealed_old) == plain
    sealed_new = both.encrypt(plain)
    assert sealed_new.metadata[KEY_ID_METADATA] == b"new" and both.decrypt(sealed_new) == plain
    assert both.decrypt(plain) == plain, "a payload recorded in clear passes through"

    only_new = codec_of("new=env:K_NEW")
    with pytest.raises(CodecError, match="key id 'old', which DRFLOW_CODEC_KEYS does not list"):
        only_new.decrypt(sealed_old)


def test_a_wrong_key_or_a_relabelled_payload_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K_A", new_key())
    monkeypatch.setenv("K_B", new_key())
    plain = pydantic_data_converter.payload_converter.to_payloads(["10.1.2.3"])[0]
    sealed = codec_of("k=env:K_A").encrypt(plain)
    with pytest.raises(CodecError, match="does not open with the key listed under that id"):
        codec_of("k=env:K_B").decrypt(sealed)
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_METADATA] = b"other"
    with pytest.raises(CodecError, match="does not open"):
        codec_of("other=env:K_A").decrypt(relabelled)  # the id is bound to the ciphertext


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({KEYS_ENV: "k1=c2VjcmV0"}, "must be a secret reference"),
        ({KEYS_ENV: "k1=env:DRFLOW_TEST_UNSET"}, "is not set"),
        ({KEYS_ENV: "k1=env:DRFLOW_TEST_SHORT"}, "is not 32 bytes"),
        ({KEYS_ENV: "k1=env:DRFLOW_TEST_GOOD,k2=env:DRFLOW_TEST_GOOD"}, "set DRFLOW_CODEC_KEY_ID"),
        ({KEYS_ENV: "k1=env:DRFLOW_TEST_GOOD", KEY_ID_ENV: "k9"}, "k9 is not among the keys"),
        ({KEY_ID_ENV: "k1"}, "DRFLOW_CODEC_KEYS is not"),
    ],
)
def test_codec_settings_that_cannot_work_stop_the_connection_with_the_reason(
    env: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    short, good = base64.b64encode(b"too short").decode(), new_key()
    monkeypatch.setenv("DRFLOW_TEST_SHORT", short)
    monkeypatch.setenv("DRFLOW_TEST_GOOD", good)
    monkeypatch.delenv("DRFLOW_TEST_UNSET", raising=False)
    for name in (KEYS_ENV, KEY_ID_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConnectionSettingsError, match=problem) as caught:
        TemporalSettings.resolve()
    assert (
        short not in str(caught.value)
        and good not in str(caught.value)
        and "c2VjcmV0" not in str(caught.value)
    )


def test_without_keys_there_is_no_codec_and_the_codec_server_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(KEY_ID_ENV, raising=False)
    assert TemporalSettings.resolve().data_converter is pydantic_data_converter
    result = CliRunner().invoke(cli, ["codec-server", "--ui-origin", "http://localhost:8233"])
    assert result.exit_code == 1 and "the codec is off: set DRFLOW_CODEC_KEYS" in result.output


# ------------------------------------------------------------------------------------- the codec server
@pytest.fixture
def codec_server(keys: dict[str, str]) -> Iterator[tuple[CodecServer, EncryptionCodec]]:
    codec = codec_of("k1=env:DRFLOW_TEST_CODEC_K1")
    server = CodecServer(
        ("127.0.0.1", free_port("127.0.0.1")),
        codec,
        CodecServerConfig.of(["http://ui.test:8233"], "Bearer t0k"),
    )
    server.start()
    try:
        yield server, codec
    finally:
        server.shutdown()
        server.server_close()


def as_json(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=list(payloads)))


def from_json(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


async def test_the_codec_server_decodes_and_encodes_for_the_ui_origin_with_the_auth_header(
    codec_server: tuple[CodecServer, EncryptionCodec],
) -> None:
    server, codec = codec_server
    plain = pydantic_data_converter.payload_converter.to_payloads([{"address": "10.1.2.3"}])[0]
    sealed = codec.encrypt(plain)
    ui = {"Origin": "http://ui.test:8233", "X-Namespace": "default", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        preflight = await http.options(
            "/decode",
            headers={"Origin": "http://ui.test:8233", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type,x-namespace,authorization"},
        )  # fmt: skip
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://ui.test:8233"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        assert "x-namespace" in preflight.headers["access-control-allow-headers"]
        other = await http.options("/decode", headers={"Origin": "http://evil.test"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers

        refused = await http.post("/decode", content=as_json(sealed), headers=ui)
        assert refused.status_code == 401 and "10.1.2.3" not in refused.text
        wrong = await http.post(
            "/decode", content=as_json(sealed), headers={**ui, "Authorization": "Bearer no"}
        )
        assert wrong.status_code == 401

        authorized = {**ui, "Authorization": "Bearer t0k"}
        decoded = await http.post("/decode", content=as_json(sealed, plain), headers=authorized)
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-origin"] == "http://ui.test:8233"
        assert decoded.headers["cache-control"] == "no-store"
        assert from_json(decoded.text) == [plain, plain]

        encoded = await http.post("/encode", content=as_json(plain), headers=authorized)
        assert encoded.status_code == 200
        [again] = from_json(encoded.text)
        assert again.metadata[KEY_ID_METADATA] == b"k1" and b"10.1.2.3" not in again.data
        assert codec.decrypt(again) == plain

        unknown = Payload()
        unknown.CopyFrom(sealed)
        unknown.metadata[KEY_ID_METADATA] = b"k0"
        bad = await http.post("/decode", content=as_json(unknown), headers=authorized)
        assert bad.status_code == 400 and "key id 'k0'" in bad.json()["error"]


async def test_a_client_without_the_codec_cannot_read_what_a_client_with_it_wrote(
    dev_env: WorkflowEnvironment, keys: dict[str, str]
) -> None:
    """The raw client (no codec) against the same namespace: the start input is ciphertext to it."""
    codec = codec_of("k1=env:DRFLOW_TEST_CODEC_K1")
    encrypted = await Client.connect(target(dev_env), data_converter=converter_for(codec))
    handle = await encrypted.start_workflow(
        "NoWorkerRunsThis", {"host": "db-7.internal", "address": "10.9.8.7"},
        id=f"codec-raw-{uuid.uuid4().hex[:8]}", task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    try:
        raw = await dev_env.client.get_workflow_handle(handle.id).fetch_history()
        assert "10.9.8.7" not in payload_texts(raw) and "db-7.internal" not in payload_texts(raw)
        assert "10.9.8.7" in payload_texts(await decode_history(raw, codec))
        with pytest.raises(CodecError, match="encrypted with key id k1"):
            await decode_history(raw, None)
    finally:
        await handle.terminate("test done")
