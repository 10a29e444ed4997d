"""Opt-in: CHGNet served over the bus gives what CHGNet gives in this process.

Run with ``pytest -m mlip``; skipped when chgnet is not installed
(``pip install torch==2.13.0 chgnet``; its weights ship inside the package, so nothing is
downloaded). A broker and one ``mlipx serve chgnet --no-uv`` worker run as processes for
the whole module, because loading the model takes seconds.

Both sides run the same weights on the same device, and the wire carries CHGNet's float32
arrays as they are. On a CPU the results come out bit-identical; the tolerance, 1e-5 (eV,
eV/A, eV/A^3), leaves room only for another summation order (other torch thread counts),
not for a different model or digits lost on the wire. On a GPU, CUDA's float32 kernels
add in no fixed order, so two runs of the same structure differ by more (on an H200:
forces by up to 1.3e-6 eV/A, stress by 4e-8, between two local runs of 32-atom Cu cells;
a batch changes the order again): there the tolerance is 1e-4, still far below any
difference a wrong model or a lost digit makes. All three tests passed there so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

pytest.importorskip("chgnet")

from mlipx_serve import GenericASECalculator, RemoteCalculator  # noqa: E402
from mlipx_serve.models.models_file import BUILTIN_MODELS  # noqa: E402
from mlipx_serve.wire.endpoints import worker_endpoint  # noqa: E402

pytestmark = [pytest.mark.mlip, pytest.mark.timeout(300)]

def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()  # where CHGNetCalculator() puts the model by default


TOLERANCE = 1e-4 if _on_gpu() else 1e-5
LOAD_TIMEOUT = 240.0  # importing torch and chgnet and loading the weights, on a busy machine
COMPARED = ("energy", "forces", "stress", "magmoms")


@pytest.fixture(scope="module")
def chgnet_bus(shared_system) -> str:
    """The client endpoint of a broker with a registered chgnet worker."""
    endpoint = shared_system.broker()
    worker = shared_system.worker("chgnet", worker_endpoint(endpoint), "--no-uv",
                                  "--timeout", "0")

    def registered() -> bool:  # (all its connections: the built-in chgnet batches 16)
        if not worker.alive():
            raise AssertionError(f"the chgnet worker exited:\n{worker.log()}")
        return shared_system.service(endpoint, "chgnet")["workers"] == 16

    shared_system.wait_until(registered, "the chgnet worker to load and register",
                             timeout=LOAD_TIMEOUT)
    return endpoint


@pytest.fixture(scope="module")
def local_chgnet():
    from chgnet.model import CHGNetCalculator

    return CHGNetCalculator()


def rattled_silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def strained_rocksalt() -> Atoms:
    """A primitive (non-orthogonal) cell, strained and rattled: stress and forces nonzero."""
    atoms = bulk("NaCl", "rocksalt", a=5.6) * (2, 1, 1)
    atoms.set_cell(atoms.cell.array @ np.diag([1.02, 0.99, 1.0]), scale_atoms=True)
    atoms.rattle(0.04, seed=2)
    return atoms


def results_of(atoms: Atoms, calc) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    return {name: calc.results[name] for name in COMPARED if name in calc.results}


def assert_same(served: dict, local: dict) -> None:
    assert {"energy", "forces", "stress"} <= set(served)
    for name, value in local.items():
        assert name in served, f"the served results lack {name!r}"
        np.testing.assert_allclose(served[name], value, rtol=0, atol=TOLERANCE, err_msg=name)


def test_served_chgnet_matches_local(chgnet_bus, local_chgnet):
    atoms = rattled_silicon()
    served = RemoteCalculator("chgnet", broker=chgnet_bus, timeout=120)
    try:
        assert_same(results_of(atoms, served), results_of(atoms, local_chgnet))
    finally:
        served.close()


def test_a_definition_as_the_catalogue_s_served_matches_local(chgnet_bus, local_chgnet,
                                                              monkeypatch):
    monkeypatch.setenv("MLIPX_SERVE_BROKER", chgnet_bus)
    model = GenericASECalculator(**dataclasses.asdict(BUILTIN_MODELS["chgnet"]))
    calc = model.get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator), "fell back to a local calculator"
    atoms = strained_rocksalt()
    try:
        assert_same(results_of(atoms, calc), results_of(atoms, local_chgnet))
    finally:
        calc.close()


def test_a_batching_chgnet_worker_matches_local(shared_system, local_chgnet):
    """CHGNet's own batched prediction (one predict_graph call per batch) gives what
    CHGNetCalculator gives for each structure alone."""
    from mlipx_serve import evaluate

    endpoint = shared_system.broker(path="batching.ipc")
    worker = shared_system.worker("chgnet", worker_endpoint(endpoint), "--no-uv",
                                  "--timeout", "0", "--batch-size", "8", "--batch-wait", "0.2")
    shared_system.wait_until(lambda: worker.alive() and
                             shared_system.service(endpoint, "chgnet")["workers"] == 8,
                             "the batching chgnet worker", timeout=LOAD_TIMEOUT)
    inputs = [rattled_silicon() if i % 2 else strained_rocksalt() for i in range(16)]
    for i, atoms in enumerate(inputs):
        atoms.rattle(0.01, seed=10 + i)
    got = evaluate("chgnet", inputs, ("energy", "forces", "stress"), broker=endpoint,
                   max_in_flight=16, timeout=120)
    for given, result in zip(inputs, got, strict=True):
        served = {name: result.calc.results[name] for name in COMPARED
                  if name in result.calc.results}
        assert_same(served, results_of(given, local_chgnet))
    assert "has no calculate_batch" not in worker.log()
