"""Strict, signed, chained archives: every tamper case of issue 14 fails verify with the file named, two
writers never fork the chain (a folder store and a real moto S3 server), and archives from before the chain
still verify as "not chained"."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

import workers.audit.archive as archive_module
from activities.approvals.attestations import Ed25519Signer
from runbooks.people import People
from tests.test_audit_archive import BUCKET, drflow, flip_a_byte, s3  # noqa: F401  (s3 is a fixture)
from workers.audit.archive import (
    ARCHIVE_NAMESPACE,
    CHAIN_DIR,
    ArchiveConfig,
    ArchiveError,
    archive_history,
    link_name,
    read_archived_history,
    verify,
    verify_chain,
)
from workers.audit.history import read_history_file

HISTORIES = Path(__file__).resolve().parent / "histories"
RUNS = ["failover-planned", "failover-aborted", "readiness", "failover-verified"]


def history(name: str) -> Any:
    return read_history_file(HISTORIES / f"{name}.json")


def new_key() -> tuple[str, str]:
    """An OpenSSH ed25519 private key text and its public key line, as ``ssh-keygen -t ed25519`` writes."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, public


@pytest.fixture
def keys() -> Iterator[dict[str, Any]]:
    worker_private, worker_public = new_key()
    rogue_private, _ = new_key()
    people = People.model_validate(
        {"people": [], "archive_keys": [{"name": "prod-worker", "key": worker_public}]}
    )
    yield {
        "signer": Ed25519Signer("prod-worker", worker_private, ARCHIVE_NAMESPACE),
        "rogue": Ed25519Signer("prod-worker", rogue_private, ARCHIVE_NAMESPACE),
        "people": people,
        "private": worker_private,
        "public": worker_public,
    }


def writable(path: Path) -> Path:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def rewrite_manifest(folder: Path, change: Any) -> None:
    manifest = folder / "manifest.json"
    document = json.loads(manifest.read_text())
    change(document)
    writable(manifest).write_text(json.dumps(document, indent=2) + "\n")


def people_file(tmp_path: Path, people: People) -> Path:
    """The people file in a runbooks directory (YAML, written as JSON, which YAML reads)."""
    path = tmp_path / "people.yaml"
    path.write_text(json.dumps(people.model_dump(mode="json")))
    return path


def archive_all(root: Path, keys: dict[str, Any], names: list[str] = RUNS) -> list[Path]:
    config = ArchiveConfig(location=str(root))
    return [
        Path(archive_history(history(n), "failover", config, signer=keys["signer"]).location) for n in names
    ]


# ------------------------------------------------------------------------------------- one archive
def test_a_signed_archive_verifies_and_says_which_key_signed(tmp_path: Path, keys: dict[str, Any]) -> None:
    (folder,) = archive_all(tmp_path / "store", keys, RUNS[:1])
    assert (folder / "manifest.sig").is_file()
    report = verify(str(folder), trust=keys["people"])
    assert report.ok, report.lines()
    assert report.signature is not None and report.signature.key_name == "prod-worker"
    assert report.chain is not None and report.chain.sequence == 1
    cli = drflow("audit", "verify", str(folder), "--people", str(people_file(tmp_path, keys["people"])))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "signed by archive key 'prod-worker'" in cli.stdout
    assert "chain:  sequence 1, the first of its store" in cli.stdout
    assert "signatures OK" in cli.stdout  # the approvals inside are still re-verified (item 4)


def tamper_flipped_byte(folder: Path, keys: dict[str, Any]) -> None:
    flip_a_byte(folder / "report.md")


def tamper_removed_from_manifest(folder: Path, keys: dict[str, Any]) -> None:
    rewrite_manifest(folder, lambda m: m.update(files=[f for f in m["files"] if f["name"] != "history.json"]))


def tamper_extra_file(folder: Path, keys: dict[str, Any]) -> None:
    (folder / "notes.txt").write_text("nothing to see\n")


def tamper_empty_manifest(folder: Path, keys: dict[str, Any]) -> None:
    rewrite_manifest(folder, lambda m: m.update(files=[]))


def tamper_resigned_by_an_untrusted_key(folder: Path, keys: dict[str, Any]) -> None:
    """The attacker changes the report, fixes its digest in the manifest and signs with their own key."""
    report = writable(folder / "report.md")
    report.write_text("# nothing happened here\n")
    data = report.read_bytes()

    def fix(m: dict[str, Any]) -> None:
        for f in m["files"]:
            if f["name"] == "report.md":
                f.update(sha256=archive_module._sha(data), bytes=len(data))
        m["signed_by"] = {"name": "prod-worker", "fingerprint": keys["rogue"].fingerprint}

    rewrite_manifest(folder, fix)
    writable(folder / "manifest.sig").write_text(
        keys["rogue"].sign_bytes((folder / "manifest.json").read_bytes())
    )


TAMPERS = {
    "flipped byte": (tamper_flipped_byte, ["CHANGED report.md"]),
    "file removed from the manifest": (
        tamper_removed_from_manifest,
        ["UNLISTED history.json", "manifest.sig: does not verify over manifest.json"],
    ),
    "extra file": (tamper_extra_file, ["EXTRA notes.txt"]),
    "empty manifest": (
        tamper_empty_manifest,
        [
            "manifest.json lists no files",
            "UNLISTED history.json",
            "UNLISTED report.md",
            "UNLISTED report.json",
        ],
    ),
    "re-signed with an untrusted key": (
        tamper_resigned_by_an_untrusted_key,
        ["manifest.sig: signed by key", "which is no trusted archive key"],
    ),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_every_tamper_case_fails_verify_with_the_file_named(
    case: str, tmp_path: Path, keys: dict[str, Any]
) -> None:
    (folder,) = archive_all(tmp_path / "store", keys, RUNS[:1])
    tamper, named = TAMPERS[case]
    tamper(folder, keys)
    report = verify(str(folder), trust=keys["people"])
    assert not report.ok
    text = "\n".join(report.lines())
    for words in named:
        assert words in text, text
    trust = people_file(tmp_path, keys["people"])
    cli = drflow("audit", "verify", str(folder), "--people", str(trust))
    assert cli.returncode == 1 and "FAILED" in cli.stdout
    assert all(words in cli.stdout for words in named), cli.stdout
    # never replayed or exported as evidence, and never overwritten by a retry
    with pytest.raises(ArchiveError, match="fails verification"):
        read_archived_history(str(folder), trust=keys["people"])
    trusted_by_default = {"DRFLOW_RUNBOOKS": str(tmp_path)}  # its people.yaml: what export and replay trust
    assert drflow("audit", "replay", str(folder), env=trusted_by_default).returncode == 1
    with pytest.raises(ArchiveError, match="fails verification"):
        config = ArchiveConfig(location=str(tmp_path / "store"))
        archive_history(history(RUNS[0]), "failover", config, trust=keys["people"])


def test_an_unsigned_archive_fails_where_archive_keys_are_trusted(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    result = archive_history(history(RUNS[0]), "failover", ArchiveConfig(location=str(tmp_path)))
    assert verify(result.location).ok  # no trust list: signed or not, said so
    assert "the archive is not signed" in "\n".join(verify(result.location).lines())
    report = verify(result.location, trust=keys["people"])
    assert not report.ok
    assert "manifest.sig: the archive is not signed, and archive_keys are trusted" in "\n".join(
        report.lines()
    )


def test_an_archive_from_before_the_chain_still_verifies_as_not_chained(tmp_path: Path) -> None:
    """Manifests written before chain and signed_by existed still parse and verify, and say so."""
    store = tmp_path / "store"
    result = archive_history(history(RUNS[0]), "failover", ArchiveConfig(location=str(store)))
    folder = Path(result.location)
    rewrite_manifest(folder, lambda m: [m.pop("chain"), m.pop("signed_by")])
    shutil.rmtree(store / CHAIN_DIR)
    report = verify(str(folder))
    assert report.ok, report.lines()
    assert "not chained (archived before drflow chained its archives)" in "\n".join(report.lines())
    chain = verify_chain(str(store))
    assert chain.ok and chain.links == 0 and chain.unchained == [f"{folder.parent.name}/{folder.name}"]
    # the next archive starts the chain at 1 beside it
    archive_history(history(RUNS[1]), "failover", ArchiveConfig(location=str(store)))
    chain = verify_chain(str(store))
    assert chain.ok and chain.links == 1, chain.lines()


# ------------------------------------------------------------------------------------------ the chain
def test_verify_store_walks_the_chain_and_prints_its_head(tmp_path: Path, keys: dict[str, Any]) -> None:
    folders = archive_all(tmp_path / "store", keys)
    chain = verify_chain(str(tmp_path / "store"), trust=keys["people"])
    assert chain.ok, chain.lines()
    assert chain.links == 4 and chain.head is not None and chain.head.sequence == 4
    last = json.loads((folders[-1] / "manifest.json").read_text())
    assert last["chain"]["previous"] == f"{folders[-2].parent.name}/{folders[-2].name}"
    cli = drflow("audit", "verify", "--store", str(tmp_path / "store"))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (
        f"chain head: sequence 4, {folders[-1].parent.name}/{folders[-1].name}, manifest sha256 "
        in cli.stdout
    )


def test_an_archive_deleted_from_the_middle_of_the_chain_is_named(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    store = tmp_path / "store"
    folders = archive_all(store, keys)
    middle = folders[1]
    writable(middle)
    shutil.rmtree(middle)
    text = "\n".join(verify_chain(str(store)).lines())
    assert (
        f"{middle.parent.name}/{middle.name}/manifest.json missing: archive 2 of the chain was deleted"
        in text
    )
    # and with its link deleted too: the hole in the sequence, and the next link's previous digest
    writable(store / CHAIN_DIR)
    (store / CHAIN_DIR / link_name(2)).unlink()
    report = verify_chain(str(store))
    text = "\n".join(report.lines())
    assert not report.ok
    assert f"{CHAIN_DIR}/0000000002.json missing: an archive (or its link) was deleted" in text
    assert f"{CHAIN_DIR}/0000000003.json follows manifest sha256" in text
    cli = drflow("audit", "verify", "--store", str(store))
    assert cli.returncode == 1 and f"{CHAIN_DIR}/0000000002.json missing" in cli.stdout


def test_two_archives_swapped_are_named(tmp_path: Path, keys: dict[str, Any]) -> None:
    store = tmp_path / "store"
    first, second, *_ = archive_all(store, keys)
    parking = tmp_path / "parking"
    first.rename(parking)
    second.rename(first)
    parking.rename(second)
    for folder in (first, second):
        report = verify(str(folder), trust=keys["people"])
        assert not report.ok and "moved, or swapped with another" in "\n".join(report.lines())
    text = "\n".join(verify_chain(str(store)).lines())
    for folder, n in ((first, 1), (second, 2)):
        where = f"{folder.parent.name}/{folder.name}/manifest.json is not the manifest chained at {CHAIN_DIR}/{link_name(n)}"
        assert where in text, text


def test_two_links_swapped_are_named(tmp_path: Path, keys: dict[str, Any]) -> None:
    store = tmp_path / "store"
    archive_all(store, keys)
    links = store / CHAIN_DIR
    writable(links)
    (links / link_name(2)).rename(links / "parked")
    (links / link_name(3)).rename(links / link_name(2))
    (links / "parked").rename(links / link_name(3))
    report = verify_chain(str(store))
    text = "\n".join(report.lines())
    assert not report.ok
    assert f"{CHAIN_DIR}/0000000002.json says sequence 3: links were renamed or reordered" in text


def test_concurrent_writers_take_distinct_places_and_never_fork_the_chain(tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = ArchiveConfig(location=str(store))
    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        results = list(pool.map(lambda n: archive_history(history(n), "failover", config), RUNS))
    sequences = sorted(r.manifest.chain.sequence for r in results if r.manifest.chain is not None)
    assert sequences == [1, 2, 3, 4]
    report = verify_chain(str(store))
    assert report.ok, report.lines()


def test_a_writer_with_a_stale_head_is_refused_and_takes_the_next_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers read the same head: the second one's exclusive create is refused, it re-reads, goes on."""
    store = tmp_path / "store"
    config = ArchiveConfig(location=str(store))
    archive_history(history(RUNS[0]), "failover", config)
    real = archive_module.chain_head
    stale = real(archive_module._child(archive_module.root_store(config), CHAIN_DIR))
    archive_history(history(RUNS[1]), "failover", config)  # the other worker takes sequence 2
    calls: list[int] = []

    def first_stale(chain: Any) -> Any:
        calls.append(1)
        return stale if len(calls) == 1 else real(chain)

    monkeypatch.setattr(archive_module, "chain_head", first_stale)
    result = archive_history(history(RUNS[2]), "failover", config)
    assert len(calls) == 2 and result.manifest.chain is not None and result.manifest.chain.sequence == 3
    assert verify_chain(str(store)).ok


def test_on_s3_the_chain_uses_conditional_writes(s3: tuple[Any, str], keys: dict[str, Any]) -> None:  # noqa: F811
    client, endpoint = s3
    # moto keeps its buckets in the process: a prefix of its own keeps the other S3 tests' archives apart.
    base = f"audit-chain-{uuid.uuid4().hex[:8]}"
    location = f"s3://{BUCKET}/{base}"
    config = ArchiveConfig(location=location)
    root = archive_module.root_store(config, client)
    chain = archive_module._child(root, CHAIN_DIR)
    assert chain.create("probe.json", b"{}", "application/json")
    assert not chain.create("probe.json", b"{}", "application/json")  # If-None-Match: * refused
    client.delete_object(Bucket=BUCKET, Key=f"{base}/{CHAIN_DIR}/probe.json")
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(
            pool.map(
                lambda n: archive_history(history(n), "failover", config, client, keys["signer"]), RUNS[:3]
            )
        )
    assert sorted(r.manifest.chain.sequence for r in results if r.manifest.chain) == [1, 2, 3]
    report = verify_chain(location, client, keys["people"])
    assert report.ok, report.lines()
    # a whole archive deleted from the middle of the chain on S3
    middle = next(r for r in results if r.manifest.chain and r.manifest.chain.sequence == 2)
    prefix = middle.location.removeprefix(f"s3://{BUCKET}/")
    for name in ("manifest.json", "manifest.sig", "history.json", "report.md", "report.json"):
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{name}")
    client.delete_object(Bucket=BUCKET, Key=f"{base}/{CHAIN_DIR}/{link_name(2)}")
    cli = drflow("audit", "verify", "--store", location, env={"AWS_ENDPOINT_URL_S3": endpoint})
    assert cli.returncode == 1 and f"{CHAIN_DIR}/0000000002.json missing" in cli.stdout, cli.stdout


# ------------------------------------------------------------------------------------------ the key
def test_the_worker_key_comes_from_a_secret_reference(tmp_path: Path, keys: dict[str, Any]) -> None:
    key_file = tmp_path / "archive-key"
    key_file.write_text(keys["private"])
    config = ArchiveConfig.from_env(
        {"DRFLOW_ARCHIVE_KEY": f"file:{key_file}", "DRFLOW_ARCHIVE_KEY_NAME": "prod-worker"}
    )
    signer = config.signer()
    assert signer is not None and signer.name == "prod-worker" and signer.public_key_line == keys["public"]
    with pytest.raises(ArchiveError, match="DRFLOW_ARCHIVE_KEY") as refused:
        ArchiveConfig.from_env({"DRFLOW_ARCHIVE_KEY": keys["private"]})
    assert "PRIVATE KEY" not in str(refused.value)  # an inline key is refused without being repeated
    os.environ.pop("DRFLOW_NO_SUCH_KEY", None)
    with pytest.raises(ArchiveError, match="not set"):
        ArchiveConfig.from_env({"DRFLOW_ARCHIVE_KEY": "env:DRFLOW_NO_SUCH_KEY"}).signer()


def test_a_signing_worker_does_not_accept_an_archive_signed_by_another_key_on_retry(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    """The retry path: the run folder already holds an archive, re-signed by someone else's key."""
    config = ArchiveConfig(location=str(tmp_path / "store"))
    first = archive_history(history(RUNS[0]), "failover", config, signer=keys["rogue"])
    with pytest.raises(ArchiveError, match="not by this worker's key prod-worker") as refused:
        archive_history(history(RUNS[0]), "failover", config, signer=keys["signer"])
    assert first.location in str(refused.value)
    again = archive_history(history(RUNS[0]), "failover", config, signer=keys["rogue"])
    assert again.already_archived
