"""Running a worker under ``uv run`` when its model's packages are missing here: uv
installs the model's extras and runs the same command again (``--no-uv``)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from mlipx_serve.errors import ServeError
from mlipx_serve.models.extras import EXTRAS, model_extras

log = logging.getLogger(__name__)


def missing_modules(model: object) -> list[str]:
    """Top-level modules the model imports that this interpreter cannot find."""
    module = getattr(model, "module", None)
    if not module:
        return []
    top = module.split(".")[0]
    return [] if importlib.util.find_spec(top) is not None else [top]


def find_uv() -> str | None:
    """uv on PATH, else the one pip installed beside this Python (not always on PATH)."""
    found = shutil.which("uv")
    if found is not None:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return None


def uv_command(extras: list[str], argv: list[str], cwd: Path | None = None) -> list[str]:
    """``uv run`` with the model's extras, then ``argv`` again with ``--no-uv``.

    Inside a project that defines the extras this is what mlipx's documentation shows:
    ``uv run --extra mace mlipx serve mace-mpa-0 --no-uv``. Elsewhere uv installs the
    extras' requirements by name into an environment layered over this Python.
    """
    uv = find_uv()
    if uv is None:
        requirements = " ".join(f"'{r}'" for extra in extras for r in EXTRAS.get(extra, []))
        raise ServeError(f"this model needs the extra(s) {', '.join(extras)}, which are not "
                         f"installed, and uv is not on PATH to install them. Install them "
                         f"with `pip install {requirements}` (or install uv), then run again")
    again = [*argv, "--no-uv"]
    if project_defines(extras, cwd or Path.cwd()):
        return [uv, "run", *(a for extra in extras for a in ("--extra", extra)), "mlipx", *again]
    requirements = [r for extra in extras for r in EXTRAS.get(extra, [extra])]
    with_args = [a for r in requirements for a in ("--with", r)]
    # "python" after "--" is the interpreter of uv's environment, which has the extras.
    return [uv, "run", "--no-project", "--python", sys.executable, *with_args, "--",
            "python", "-m", "mlipx_serve.cli", *again]


def project_defines(extras: list[str], start: Path) -> bool:
    """Is there a pyproject.toml above ``start`` whose optional dependencies name them all?"""
    try:
        import tomllib
    except ImportError:  # Python 3.10: fall back to naming the requirements
        return False
    for directory in (start, *start.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                return False
            defined = data.get("project", {}).get("optional-dependencies", {})
            return all(extra in defined for extra in extras)
    return False


def reexec_under_uv(model: object, argv: list[str]) -> None:
    """Replace this process with ``uv run ...`` when the model's packages are missing."""
    extras = model_extras(model)
    if not extras or not missing_modules(model):
        return
    command = uv_command(extras, argv)
    log.info("model needs %s; running under uv: %s", ", ".join(extras), " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
