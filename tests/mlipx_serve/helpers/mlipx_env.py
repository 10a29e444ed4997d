"""A virtual environment with the real mlipx 0.1.5 beside this project, built once, cached.

``test_with_mlipx.py`` uses it; ``.ci/run`` builds it first (``python
tests/mlipx_serve/helpers/mlipx_env.py``) so that the build shows on its own in CI.
It lives under ``$MLIPX_SERVE_TEST_CACHE`` (default ``~/.cache/mlipx-serve-tests``), one
folder per recipe and Python version; this checkout is installed into it (editable) on
every use, as a user would install it beside mlipx. uv builds it: pip takes minutes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

MLIPX = "mlipx==0.1.5"
# mlipx 0.1.5's command line imports zndraw 0.6, which imports asebytes.BytesIO: gone
# from asebytes 0.3 on, so without this pin `mlipx --help` fails to load.
PINS = ["asebytes<0.3"]
PROJECT = Path(__file__).resolve().parents[3]
CACHE_ENV = "MLIPX_SERVE_TEST_CACHE"


class EnvUnavailable(RuntimeError):
    """The environment cannot be built here (no uv, no package index)."""


def env_dir() -> Path:
    recipe = " ".join([MLIPX, *PINS, sys.version])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlipx-serve-tests")
    return root / f"mlipx-0.1.5-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def uv(*args: str) -> None:
    from mlipx_serve.worker.uv import find_uv

    binary = find_uv()
    if binary is None:
        raise EnvUnavailable("uv is not installed (it comes with the test extra)")
    done = subprocess.run([binary, *args], capture_output=True, text=True,
                          env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
    if done.returncode != 0:
        raise EnvUnavailable(f"`uv {' '.join(args)}` failed:\n{done.stderr[-3000:]}")


def install_project(env: Path) -> None:
    """This checkout, editable, last: so its ``mlipx`` script is the one on PATH."""
    uv("pip", "install", "-q", "--python", str(python_of(env)),
       "--reinstall-package", "mlipx-serve", "-e", str(PROJECT))


def reinstall_mlipx(env: Path) -> None:
    """mlipx again, without its dependencies: now its ``mlipx`` script is on PATH."""
    uv("pip", "install", "-q", "--python", str(python_of(env)), "--no-deps",
       "--reinstall-package", "mlipx", MLIPX)


def ensure() -> Path:
    """The environment's folder, built if missing, with this checkout installed."""
    env = env_dir()
    if not (env / "ready").exists():
        shutil.rmtree(env, ignore_errors=True)  # a build that broke off half-way
        uv("venv", "-q", "--python", sys.executable, str(env))
        uv("pip", "install", "-q", "--python", str(python_of(env)), MLIPX, *PINS)
        (env / "ready").write_text(f"{MLIPX} {' '.join(PINS)}\n")
    install_project(env)
    return env


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT))
    print(f"mlipx environment ready: {ensure()}")
