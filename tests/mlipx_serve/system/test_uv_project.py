"""`uv run mlipx serve ...` inside this project's folder, as mlipx's documentation shows.

Resolution needs the package index (PyPI); without it these tests skip, saying so. No
model package is installed: the extras are resolved, not downloaded (torch alone would be
gigabytes), and the model worker's hand-off to uv is checked through a stand-in `uv`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from support import PROJECT

from mlipx_serve.models.extras import EXTRAS
from mlipx_serve.worker.uv import find_uv

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

UNREACHABLE = ("failed to fetch", "dns error", "connection", "network", "timed out")


@pytest.fixture(scope="module")
def uv() -> str:
    found = find_uv()
    if found is None:
        pytest.skip("needs uv (it comes with the test extra)")
    return found


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files as a fresh checkout has them: uv writes .venv and uv.lock."""
    copy = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md", "mlipx_serve_hook.pth"):
        shutil.copy(PROJECT / name, copy / name)
    for package in ("mdp", "mlipx_serve"):
        shutil.copytree(PROJECT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def uv_env(**extra: str) -> dict[str, str]:
    """Use this Python, never download one; and no settings of an outer uv project."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("UV_", "VIRTUAL_ENV", "MLIPX_"))}
    return {**env, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never", **extra}


def run_uv(uv: str, project: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([uv, *args], cwd=project, env=uv_env(), capture_output=True,
                          text=True, timeout=480, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and any(word in done.stderr.lower() for word in UNREACHABLE) \
            and "no solution found" not in done.stderr.lower():
        pytest.skip(f"the package index cannot be reached: {done.stderr.strip()[-300:]}")
    return done


def test_every_extra_resolves_with_the_declared_conflicts(uv, project_copy):
    locked = run_uv(uv, project_copy, "lock")
    assert locked.returncode == 0, locked.stderr
    assert EXTRAS, "the installed metadata names no extras"
    for extra in EXTRAS:
        planned = run_uv(uv, project_copy, "sync", "--dry-run", "--extra", extra)
        assert planned.returncode == 0, f"--extra {extra}:\n{planned.stderr}"


def test_uv_run_mlipx_serve_emt_in_the_project_folder(uv, project_copy, serve_system):
    bus = serve_system.broker()
    serve_system.spawn("uv-worker", [uv, "run", "mlipx", "serve", "emt", "--broker", bus,
                                     "--heartbeat", "0.3"], cwd=project_copy,
                       UV_PYTHON=sys.executable, UV_PYTHON_DOWNLOADS="never")
    # the first run installs the project's environment into .venv: allow for it
    serve_system.wait_until(lambda: serve_system.service(bus, "emt")["workers"] == 1
                            or _exited(serve_system), "a worker started by `uv run`", 420)
    assert not _exited(serve_system), serve_system.procs[-1].log()
    from mlipx_serve import RemoteCalculator

    atoms = bulk("Cu", cubic=True)
    atoms.calc = RemoteCalculator("emt", bus, timeout=60)
    local = atoms.copy()
    local.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(local.get_potential_energy(),
                                                         abs=1e-12)


def _exited(system: ServeSystem) -> bool:
    return not system.procs[-1].alive()


STAND_IN_UV = """#!/bin/sh
# records how the worker called uv, instead of installing mace-torch
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
"""


def test_a_model_with_an_extra_becomes_uv_run_with_that_extra(project_copy, tmp_path,
                                                               serve_system: ServeSystem):
    """`mlipx serve mace-mpa-0` in the project folder hands itself to uv as the page says,
    keeping its other options."""
    if importlib.util.find_spec("mace") is not None:
        pytest.skip("mace is installed here: the worker would not need uv")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text(STAND_IN_UV)
    (bin_dir / "uv").chmod(0o755)
    models = tmp_path / "models.py"
    models.write_text("ALL_MODELS = {}\n")
    run = serve_system.run(sys.executable, "-m", "mlipx_serve.cli", "serve", "mace-mpa-0",
                           "--broker", "ipc:///nowhere.ipc", "--timeout", "7",
                           "--models", str(models), cwd=project_copy,
                           PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert run.returncode == 0, run.stderr
    argv = (bin_dir / "argv").read_text().split("\n")[:-1]
    assert argv == ["run", "--extra", "mace", "mlipx", "serve", "mace-mpa-0",
                    "--broker", "ipc:///nowhere.ipc", "--timeout", "7",
                    "--models", str(models), "--no-uv"]


def test_the_readme_installs_from_a_clone_into_a_virtual_environment():
    """mlipx-serve is not on the package index: `pip install mlipx-serve` finds nothing."""
    readme = (PROJECT / "README.md").read_text()
    commands = [line for block in re.findall(r"```\n(.*?)```", readme, re.S)
                for line in block.splitlines()]
    by_name = [line for line in commands if re.search(r"pip install\s+'?mlipx-serve\b", line)]
    assert by_name == []
    set_up = readme.split("## Set up")[1].split("\n## ")[0]
    assert set_up.index("python -m venv") < set_up.index("pip install -e")
