"""The people file: real ssh-keygen keys, and each refusal reported at its line and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runbooks.loader import RunbookError
from runbooks.people import (
    PeopleFileError,
    UnknownApproverError,
    fingerprint,
    load_people_file,
    parse_people,
    people_schema,
)
from tests.support.sshkeys import Key, make_key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("people-keys")
    return {
        "alice": make_key(directory, "alice"),
        "alice-old": make_key(directory, "alice-old", "rsa"),
        "bob": make_key(directory, "bob", "ecdsa"),
        "gateway": make_key(directory, "gateway"),
    }


def people_yaml(keys: dict[str, Key]) -> str:
    return f"""\
people:
  - name: alice
    display_name: Alice A.
    keys:
      - {keys["alice"].public_line}
      - {keys["alice-old"].public_line}
    revoked_keys: [{keys["alice-old"].fingerprint}]
    slack: [U01ALICE]
    groups: [dba, oncall]
  - name: bob
    keys: [{keys["bob"].public_line}]
    slack: [U02BOB, W02BOB]
    groups: [oncall]
gateways:
  - name: slack-prod
    key: {keys["gateway"].public_line}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(PeopleFileError) as caught:
        parse_people(text.encode(), "people.yaml")
    return [str(p) for p in caught.value.problems]


def test_a_valid_file_loads_with_ssh_keygen_fingerprints(keys: dict[str, Key], tmp_path: Path) -> None:
    file = tmp_path / "people.yaml"
    file.write_text(people_yaml(keys))
    people = load_people_file(file)
    alice = people.person("alice")
    for kind in ("alice", "alice-old", "bob"):
        assert fingerprint(keys[kind].public_line) == keys[kind].fingerprint
    assert set(alice.fingerprints()) == {keys["alice"].fingerprint, keys["alice-old"].fingerprint}
    assert people.person_for_slack("W02BOB") is people.person("bob")
    assert people.person_for_slack("U09NOBODY") is None
    assert people.members("oncall") == {"alice", "bob"}
    assert people.resolve("dba") == {"alice"}
    assert people.resolve("bob") == {"bob"}
    gateway = people.gateway_for(keys["gateway"].fingerprint)
    assert gateway is not None and gateway.name == "slack-prod"


def test_key_allowed_only_for_its_person_and_not_once_revoked(keys: dict[str, Key]) -> None:
    people = parse_people(people_yaml(keys).encode(), "people.yaml")
    assert people.key_allowed("alice", keys["alice"].fingerprint)
    assert not people.key_allowed("alice", keys["alice-old"].fingerprint), "revoked"
    assert not people.key_allowed("alice", keys["bob"].fingerprint), "bob's key"
    assert "alice-old@test" not in people.allowed_signers()
    assert people.allowed_signers().startswith(
        'alice namespaces="drflow-approval,drflow-request" ssh-ed25519 '
    )
    assert 'gateway:slack-prod namespaces="drflow-slack-attestation" ssh-ed25519 ' in people.allowed_signers()


def test_unknown_group_or_person_is_an_error_not_an_empty_set(keys: dict[str, Key]) -> None:
    people = parse_people(people_yaml(keys).encode(), "people.yaml")
    with pytest.raises(UnknownApproverError, match="'dbas' is neither a person nor a group"):
        people.resolve("dbas")
    with pytest.raises(UnknownApproverError):
        people.members("alice")  # a person, not a group
    with pytest.raises(UnknownApproverError):
        people.key_allowed("mallory", keys["alice"].fingerprint)


def test_a_slack_id_of_two_people_is_refused_naming_both(keys: dict[str, Key]) -> None:
    text = people_yaml(keys).replace("slack: [U02BOB, W02BOB]", "slack: [U02BOB, U01ALICE]")
    assert problems_of(text) == [
        "people.yaml:12: people[1].slack[1]: Slack id U01ALICE is both 'alice' and 'bob'"
    ]


def test_a_key_listed_for_two_people_is_refused(keys: dict[str, Key]) -> None:
    text = people_yaml(keys).replace(keys["bob"].public_line, keys["alice"].public_line)
    assert problems_of(text) == [
        f"people.yaml:11: people[1].keys[0]: key {keys['alice'].fingerprint} is listed for both 'alice' and 'bob'"
    ]


def test_duplicate_names_and_a_group_named_like_a_person_are_refused(keys: dict[str, Key]) -> None:
    text = (
        people_yaml(keys)
        .replace("- name: bob", "- name: alice")
        .replace("groups: [oncall]\n", "groups: [bob]\n")
    )
    found = problems_of(text)
    assert any("people[1].name: 'alice' is already people[0]" in p for p in found), found
    text = people_yaml(keys).replace("groups: [oncall]\n", "groups: [alice]\n")
    assert problems_of(text) == [
        "people.yaml:13: people[1].groups[0]: group 'alice' is also a person's name: resolve() would be ambiguous"
    ]
    assert (
        "groups[0]"
        in problems_of(people_yaml(keys).replace("groups: [dba, oncall]", "groups: [DBA, oncall]"))[0]
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("ssh-ed25519 not*base64 x", "the key is not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBad", "not an OpenSSH public key"),
        ("ssh-ed25519", "expected '<type> <base64> [comment]'"),
    ],
)
def test_bad_key_text_is_refused_at_its_line(keys: dict[str, Key], bad: str, message: str) -> None:
    text = people_yaml(keys).replace(keys["bob"].public_line, bad)
    [problem] = problems_of(text)
    assert problem.startswith(f"people.yaml:11: people[1].keys[0]: {message}"), problem


def test_small_rsa_keys_and_non_ed25519_gateways_are_refused(keys: dict[str, Key], tmp_path: Path) -> None:
    weak = make_key(tmp_path, "weak", "rsa", bits=1024)
    [problem] = problems_of(people_yaml(keys).replace(keys["bob"].public_line, weak.public_line))
    assert "RSA key of 1024 bits" in problem
    [problem] = problems_of(people_yaml(keys).replace(keys["gateway"].public_line, keys["bob"].public_line))
    assert problem == "people.yaml:16: gateways[0].key: a gateway key is an ssh-ed25519 public key"


def test_a_gateway_key_must_be_its_own(keys: dict[str, Key]) -> None:
    text = people_yaml(keys).replace(keys["gateway"].public_line, keys["alice"].public_line)
    [problem] = problems_of(text)
    assert problem == (
        f"people.yaml:16: gateways[0].key: key {keys['alice'].fingerprint} is also listed for 'alice': a gateway has its own key"
    )
    second = f"  - name: slack-dr\n    key: {keys['gateway'].public_line}\n"
    [problem] = problems_of(people_yaml(keys) + second)
    assert problem.startswith("people.yaml:18: gateways[1].key: key ") and "'gateway slack-prod'" in problem


def test_revoked_keys_are_fingerprints_and_unknown_fields_are_refused(keys: dict[str, Key]) -> None:
    text = people_yaml(keys).replace(
        f"revoked_keys: [{keys['alice-old'].fingerprint}]", "revoked_keys: [MD5:ab]"
    )
    [problem] = problems_of(text)
    assert problem.startswith("people.yaml:7: people[0].revoked_keys[0]: String should match pattern"), (
        problem
    )
    [problem] = problems_of(people_yaml(keys).replace("display_name:", "displayname:"))
    assert (
        problem
        == "people.yaml:3: people[0].displayname: unknown field (check the spelling; see docs/approvals.md)"
    )


def test_yaml_errors_use_the_runbook_loader_reporting(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match="a people file is a YAML mapping"):
        parse_people(b"- alice\n", "people.yaml")
    with pytest.raises(PeopleFileError, match="cannot read"):
        load_people_file(tmp_path / "missing.yaml")


def test_the_json_schema_is_committed_and_current() -> None:
    committed = json.loads(Path("docs/people.schema.json").read_text())
    assert committed == people_schema()


def test_drflow_people_validate_and_allowed_signers_as_an_operator_runs_them(
    keys: dict[str, Key], tmp_path: Path
) -> None:
    drflow = [str(Path(sys.executable).parent / "drflow")]
    (tmp_path / "people.yaml").write_text(people_yaml(keys))
    done = subprocess.run(
        [*drflow, "--runbooks", str(tmp_path), "people", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'people.yaml'}: ok: 2 people, 3 keys, 2 groups, 1 gateways\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(people_yaml(keys).replace("U02BOB, W02BOB", "U02BOB, U01ALICE"))
    done = subprocess.run(
        [*drflow, "people", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"{bad}:12: people[1].slack[1]: Slack id U01ALICE is both 'alice' and 'bob'\n"
    done = subprocess.run(
        [*drflow, "--runbooks", str(tmp_path), "people", "allowed-signers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["alice", "bob", "gateway:slack-prod"]
