"""Signed decisions with real keys: ssh-keygen signs and drflow verifies, drflow signs and ssh-keygen verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.approvals.signatures import (
    BadSignature,
    DecisionPayload,
    Expected,
    KeyNotListed,
    KeyRevoked,
    MalformedPayload,
    MalformedSignature,
    OutsideWindow,
    PayloadMismatch,
    SignatureRefused,
    UnknownSigner,
    WrongNamespace,
    parse_armored,
    utc_stamp,
    verify_decision,
)
from activities.approvals.signing import SigningError, sign
from runbooks.people import People, parse_people
from tests.support.sshkeys import SSH_KEYGEN, Key, keygen_sign, make_key

NOW = datetime(2026, 12, 2, 1, 45, 0, tzinfo=UTC)
CHECKSUM = "3f" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("signature-keys")
    return {
        "alice": make_key(directory, "alice"),
        "alice-rsa": make_key(directory, "alice-rsa", "rsa"),
        "alice-ecdsa": make_key(directory, "alice-ecdsa", "ecdsa"),
        "alice-old": make_key(directory, "alice-old"),
        "bob": make_key(directory, "bob"),
    }


@pytest.fixture(scope="module")
def people(keys: dict[str, Key]) -> People:
    text = f"""\
people:
  - name: alice
    keys:
      - {keys["alice"].public_line}
      - {keys["alice-rsa"].public_line}
      - {keys["alice-ecdsa"].public_line}
      - {keys["alice-old"].public_line}
    revoked_keys: [{keys["alice-old"].fingerprint}]
  - name: bob
    keys: [{keys["bob"].public_line}]
"""
    return parse_people(text.encode(), "people.yaml")


def payload(**changes: object) -> DecisionPayload:
    fields: dict[str, object] = {
        "workflow_id": "failover-checkout-1",
        "run_id": "0b7e-run",
        "gate": "failover",
        "decision": "approve",
        "plan_checksum": CHECKSUM,
        "person": "alice",
        "signed_at": utc_stamp(NOW - timedelta(minutes=1)),
    }
    fields.update(changes)
    return DecisionPayload.model_validate(fields)


def expected(**changes: object) -> Expected:
    fields: dict[str, object] = {
        "workflow_id": "failover-checkout-1",
        "run_id": "0b7e-run",
        "gate": "failover",
        "decision": "approve",
        "plan_checksum": CHECKSUM,
        "person": "alice",
    }
    fields.update(changes)
    return Expected.model_validate(fields)


def refusal(people: People, message: bytes, armored: str, **changes: object) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as caught:
        verify_decision(message, armored, expected=expected(**changes), people=people, now=NOW)
    return caught.value


@pytest.mark.parametrize("key", ["alice", "alice-rsa", "alice-ecdsa"])
def test_ssh_keygen_signatures_verify(keys: dict[str, Key], people: People, key: str) -> None:
    message = payload().canonical()
    armored = keygen_sign(keys[key], message)
    verified = verify_decision(message, armored, expected=expected(), people=people, now=NOW)
    assert (verified.person, verified.fingerprint) == ("alice", keys[key].fingerprint)
    if key == "alice-rsa":
        assert parse_armored(armored).signature_algorithm == "rsa-sha2-512"


def test_a_decide_payload_binds_the_failed_step(keys: dict[str, Key], people: People) -> None:
    message = payload(gate=None, failed_step="promote-database", decision="retry").canonical()
    armored = keygen_sign(keys["alice"], message)
    wanted = expected(gate=None, failed_step="promote-database", decision="retry")
    assert verify_decision(message, armored, expected=wanted, people=people, now=NOW).person == "alice"
    refused = refusal(people, message, armored, gate=None, failed_step="switch-dns", decision="retry")
    assert isinstance(refused, PayloadMismatch) and "failed_step 'promote-database'" in str(refused)


def test_the_payload_is_canonical_versioned_json(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    assert message.startswith(b'{"decision":"approve","gate":"failover","namespace":"drflow-approval",')
    assert b'"version":1' in message and b" " not in message
    spaced = message.replace(b",", b", ")
    assert isinstance(refusal(people, spaced, keygen_sign(keys["alice"], spaced)), MalformedPayload)
    newer = payload().model_dump() | {"version": 2}
    with pytest.raises(MalformedPayload, match=r"^not a drflow decision: version: Input should be 1$"):
        verify_decision(
            json.dumps(newer),
            keygen_sign(keys["alice"], json.dumps(newer).encode()),
            expected=expected(),
            people=people,
            now=NOW,
        )
    both = payload().model_dump() | {"failed_step": "switch-dns"}
    with pytest.raises(MalformedPayload, match=r"^not a drflow decision: a decision answers exactly one"):
        verify_decision(
            json.dumps(both),
            keygen_sign(keys["alice"], json.dumps(both).encode()),
            expected=expected(),
            people=people,
            now=NOW,
        )
    with pytest.raises(ValueError, match="exactly one of gate or failed_step"):
        payload(failed_step="switch-dns")
    with pytest.raises(ValueError, match="accept-data-loss answers only the data-loss gate"):
        payload(decision="accept-data-loss")
    with pytest.raises(ValueError, match="plan_checksum"):
        payload(plan_checksum=CHECKSUM[:12])


def test_drflow_signatures_verify_with_ssh_keygen(
    keys: dict[str, Key], people: People, tmp_path: Path
) -> None:
    message = payload().canonical()
    armored = sign(payload(), keys["alice"].private)
    assert verify_decision(message, armored, expected=expected(), people=people, now=NOW).person == "alice"
    (tmp_path / "allowed_signers").write_text(people.allowed_signers())
    (tmp_path / "decision.sig").write_text(armored)
    command = [SSH_KEYGEN, "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-n", "drflow-approval"]
    command += ["-s", str(tmp_path / "decision.sig")]
    done = subprocess.run([*command, "-I", "alice"], input=message, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b'Good "drflow-approval" signature for alice' in done.stdout
    done = subprocess.run([*command, "-I", "bob"], input=message, capture_output=True, check=False)
    assert done.returncode != 0, "ssh-keygen agrees the key is alice's, not bob's"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private ssh-agent for one test, stopped by its own pid."""
    socket = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        yield {**os.environ, "SSH_AUTH_SOCK": str(socket)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_signing_through_the_ssh_agent(keys: dict[str, Key], people: People, agent: dict[str, str]) -> None:
    with pytest.raises(SigningError, match="no keys"):
        sign(payload(), env=agent)
    subprocess.run(["ssh-add", str(keys["bob"].private)], env=agent, check=True, capture_output=True)
    subprocess.run(["ssh-add", str(keys["alice-rsa"].private)], env=agent, check=True, capture_output=True)
    armored = sign(payload(), allowed_keys=people.person("alice").keys, env=agent)
    verified = verify_decision(payload().canonical(), armored, expected=expected(), people=people, now=NOW)
    assert verified.fingerprint == keys["alice-rsa"].fingerprint
    with pytest.raises(SigningError, match="none of the ssh-agent's keys"):
        sign(payload(), allowed_keys=[keys["alice"].public_line], env=agent)
    with pytest.raises(SigningError, match="SSH_AUTH_SOCK"):
        sign(payload(), env={k: v for k, v in agent.items() if k != "SSH_AUTH_SOCK"})


def test_an_altered_decision_is_a_bad_signature(keys: dict[str, Key], people: People) -> None:
    armored = keygen_sign(keys["alice"], payload(decision="reject").canonical())
    refused = refusal(people, payload().canonical(), armored)
    assert isinstance(refused, BadSignature), refused
    body = parse_armored(armored)
    assert body.namespace == "drflow-approval" and body.hash_algorithm == "sha512"


def test_another_namespace_is_refused(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    refused = refusal(people, message, keygen_sign(keys["alice"], message, namespace="git"))
    assert isinstance(refused, WrongNamespace)
    assert str(refused) == "signed for namespace 'git', not 'drflow-approval'"


def test_a_key_not_listed_for_that_person_is_refused(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    refused = refusal(people, message, keygen_sign(keys["bob"], message))
    assert isinstance(refused, KeyNotListed) and keys["bob"].fingerprint in str(refused)


def test_a_revoked_key_is_refused(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    refused = refusal(people, message, keygen_sign(keys["alice-old"], message))
    assert isinstance(refused, KeyRevoked)
    assert str(refused) == f"key {keys['alice-old'].fingerprint} of 'alice' is revoked"


def test_a_person_not_in_the_people_file_is_refused(keys: dict[str, Key], people: People) -> None:
    message = payload(person="mallory").canonical()
    refused = refusal(people, message, keygen_sign(keys["alice"], message), person="mallory")
    assert isinstance(refused, UnknownSigner)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workflow_id", "failover-checkout-2"),
        ("run_id", "another-run"),
        ("gate", "data-loss"),
        ("decision", "reject"),
        ("plan_checksum", "4e" * 32),
        ("person", "bob"),
    ],
)
def test_a_decision_for_another_run_gate_decision_or_plan_is_refused(
    keys: dict[str, Key], people: People, field: str, value: str
) -> None:
    message = payload().canonical()
    refused = refusal(people, message, keygen_sign(keys["alice"], message), **{field: value})
    assert isinstance(refused, PayloadMismatch), refused
    if field == "plan_checksum":  # a changed plan names the current one, so the person can review it
        assert str(refused).startswith("the plan changed since it was signed"), refused
        assert value in str(refused), refused
    else:
        assert str(refused).startswith(f"signed for {field} "), refused


@pytest.mark.parametrize(
    ("signed", "ok"),
    [
        (NOW - timedelta(minutes=10), True),
        (NOW - timedelta(minutes=10, seconds=1), False),
        (NOW + timedelta(minutes=2), True),
        (NOW + timedelta(minutes=2, seconds=1), False),
    ],
)
def test_the_timestamp_must_be_within_the_window(
    keys: dict[str, Key], people: People, signed: datetime, ok: bool
) -> None:
    message = payload(signed_at=utc_stamp(signed)).canonical()
    armored = keygen_sign(keys["alice"], message)
    if ok:
        assert (
            verify_decision(message, armored, expected=expected(), people=people, now=NOW).person == "alice"
        )
    else:
        assert isinstance(refusal(people, message, armored), OutsideWindow)


def test_garbled_armor_is_malformed(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    armored = keygen_sign(keys["alice"], message)
    lines = armored.strip().splitlines()
    for broken in (
        "not a signature",
        "\n".join([lines[0], "!!!", lines[-1]]),
        "\n".join([lines[0], lines[1][:8], lines[-1]]),
        armored.replace("-----BEGIN SSH SIGNATURE-----", "-----BEGIN PGP SIGNATURE-----"),
    ):
        assert isinstance(refusal(people, message, broken), MalformedSignature), broken


def test_verification_needs_an_aware_now(keys: dict[str, Key], people: People) -> None:
    message = payload().canonical()
    with pytest.raises(ValueError, match="aware"):
        verify_decision(
            message,
            keygen_sign(keys["alice"], message),
            expected=expected(),
            people=people,
            now=NOW.replace(tzinfo=None),
        )
