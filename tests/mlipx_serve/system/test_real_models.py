"""The real-model tests (``-m mlip``: CHGNet served and local, TorchSim's batched models)
in an environment that has the models, built once and cached (``helpers/mlip_env.py``), so
that every run of the test suite checks the project on a real MLIP. Skipped, saying why,
where that environment cannot be built (no package index)."""

from __future__ import annotations

import subprocess

import pytest
from support import HELPERS, PROJECT, load_module

pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow]

mlip_env = load_module(HELPERS / "mlip_env.py", "mlip_env")
REAL_MODEL_TESTS = ["tests/mlipx_serve/system/test_chgnet.py",
                    "tests/mlipx_serve/models/test_torchsim.py"]


def test_the_real_model_tests_pass_where_the_models_are_installed():
    try:
        env = mlip_env.ensure()
    except mlip_env.EnvUnavailable as why:
        pytest.skip(f"no environment with CHGNet and TorchSim here: {why}")
    run = subprocess.run([str(mlip_env.python_of(env)), "-m", "pytest", "-m", "mlip", "-q",
                          "-p", "no:cacheprovider", "-rs", *REAL_MODEL_TESTS],
                         cwd=PROJECT, capture_output=True, text=True, timeout=1200)
    said = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, said
    assert " skipped" not in said.splitlines()[-1], said  # every one ran: none lacked a model
