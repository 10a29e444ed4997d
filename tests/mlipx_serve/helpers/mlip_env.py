"""A virtual environment with real MLIPs (CHGNet, TorchSim) on PyTorch's CPU build, beside
this project: built once, cached, for the opt-in ``-m mlip`` tests.

``test_real_models.py`` runs those tests in it; ``.ci/run`` builds it first (``python
tests/mlipx_serve/helpers/mlip_env.py``) so that the build shows on its own in CI. It
lives under ``$MLIPX_SERVE_TEST_CACHE`` (default ``~/.cache/mlipx-serve-tests``), one
folder per recipe and Python version; this checkout is installed into it (editable) on
every use. pip builds it, torch first and pinned: pip takes the CPU wheel of
``TORCH`` that lies on this machine's disk, where uv (and a resolver left to choose)
would download a CUDA build of gigabytes. CHGNet ships its weights: nothing else is
downloaded when the tests run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
MODELS = ["chgnet", "torch-sim-atomistic"]
TOOLS = ["pytest>=8", "pytest-timeout>=2"]
PROJECT = Path(__file__).resolve().parents[3]
CACHE_ENV = "MLIPX_SERVE_TEST_CACHE"


class EnvUnavailable(RuntimeError):
    """The environment cannot be built here (no package index, a package that fails)."""


def env_dir() -> Path:
    recipe = " ".join([TORCH, *MODELS, *TOOLS, sys.version])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlipx-serve-tests")
    return root / f"mlip-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def pip(env: Path, *args: str) -> None:
    done = subprocess.run([str(python_of(env)), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EnvUnavailable(f"`pip install {' '.join(args)}` failed:\n{done.stderr[-3000:]}")


def ensure() -> Path:
    """The environment's folder, built if missing, with this checkout installed."""
    env = env_dir()
    constraint = env / "torch-constraint.txt"  # never another torch, a CUDA one least
    if not (env / "ready").exists():
        shutil.rmtree(env, ignore_errors=True)  # a build that broke off half-way
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        pip(env, TORCH)
        constraint.write_text(f"{TORCH}\n")
        pip(env, "-c", str(constraint), *MODELS, *TOOLS)
        (env / "ready").write_text(" ".join([TORCH, *MODELS, *TOOLS]) + "\n")
    pip(env, "-c", str(constraint), "-e", str(PROJECT))
    return env


if __name__ == "__main__":
    print(f"MLIP environment ready: {ensure()}")
