"""The layers of README's "How it is built" hold: ``lint-imports`` checks the contracts of
pyproject.toml (no layer imports a higher one, the bus knows no models, no circles)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support import PROJECT

pytestmark = pytest.mark.timeout(120)


def test_the_import_contracts_are_kept():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("lint-imports is not installed (it comes with the test extra)")
    done = subprocess.run([lint, "--no-cache"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
