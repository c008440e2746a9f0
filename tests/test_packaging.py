"""drflow as an operator installs it: ``pip install .`` into a clean venv, the console script run elsewhere.

Every other test runs against the editable install, which reads the source tree and so hides a module,
package or data file that the wheel leaves out. This one builds the wheel from what the Dockerfile copies
(pyproject.toml, README.md, the four top-level packages) and runs ``drflow`` from outside the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "workflows", "activities", "runbooks", "workers")
FAMILIES = {
    "runbook", "check", "failover", "failback", "approve", "reject", "accept-data-loss", "decide", "status",
    "worker", "dev", "sandbox", "gateway", "audit", "drill",
}  # fmt: skip


class Installed:
    """A venv holding a regular (non-editable) install of drflow, and a working directory outside ROOT."""

    def __init__(self, venv: Path, cwd: Path) -> None:
        self.venv = venv
        self.cwd = cwd
        # No PYTHONPATH: the installed packages, not the source tree, must answer.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DRFLOW_RUNBOOKS")}

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / program), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    # Build from a copy: an in-tree build leaves build/ behind, whose stale files a later wheel would ship.
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Build isolation stays on: the venv's own setuptools (3.11's ensurepip) is older than the >=68 required.
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         "--no-compile", "."],
        cwd=source, capture_output=True, text=True, timeout=270,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip install . failed ({pip.returncode}):\n{pip.stdout}\n{pip.stderr}"
    return Installed(venv, base)


def test_the_installed_command_lists_every_command_family(installed: Installed) -> None:
    result = installed.run("drflow", "--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.partition("Commands:")[2].split("\n")
    names = {line.split()[0] for line in listed if line.startswith("  ") and line.split()}
    assert names >= FAMILIES, f"missing: {sorted(FAMILIES - names)}\n{result.stdout}"


def test_it_runs_from_site_packages_not_from_the_source_tree(installed: Installed) -> None:
    # find_spec, not import: the answer is where the module lives, without loading Temporal's SDK again.
    code = "import importlib.util as u; print(u.find_spec('workers.cli.main').origin)"
    result = installed.run("python", "-c", code)
    assert result.returncode == 0, result.stderr
    location = Path(result.stdout.strip())
    assert location.is_relative_to(installed.venv), location
    assert not location.is_relative_to(ROOT), location


def test_the_example_runbooks_ship_and_validate(installed: Installed) -> None:
    where = installed.run("python", "-c", "import runbooks; print(runbooks.__path__[0])")
    assert where.returncode == 0, where.stderr
    packaged = Path(where.stdout.strip())
    assert packaged.is_relative_to(installed.venv), packaged
    files = sorted(str(p) for p in [*packaged.glob("*.yaml"), *packaged.glob("examples/*.yaml")])
    shipped = {Path(f).relative_to(packaged).as_posix() for f in files}
    assert shipped >= {"sandbox.yaml", "examples/aws.yaml", "examples/gcp.yaml"}, shipped
    result = installed.run("drflow", "runbook", "validate", *files)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(files), result.stdout
    assert all(" ok: " in line for line in result.stdout.splitlines()), result.stdout
