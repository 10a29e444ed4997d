"""A model defined in Python, served by a worker process to other scripts (serve_model)."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from ase.build import bulk
from ase.calculators.lj import LennardJones

from mlipx_serve import ModelStartError, serve_model
from mlipx_serve.wire.factory_file import load_factory, write_factory

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(120)

ENERGY_OF = """
    import json, sys
    from ase.build import bulk
    from mlipx_serve import RemoteCalculator

    atoms = bulk("Ar", "fcc", a=5.2, cubic=True)
    atoms.calc = RemoteCalculator(sys.argv[1], sys.argv[2], timeout=30)
    print(json.dumps(atoms.get_potential_energy()))
"""


@pytest.fixture
def private(serve_system: ServeSystem, monkeypatch: pytest.MonkeyPatch) -> ServeSystem:
    """This test process's private directory inside the system's, as its children's is."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(serve_system.run_dir))
    return serve_system


def test_a_factory_defined_here_is_served_to_another_script(private):
    bus = private.broker()
    sigma, epsilon = 3.1, 0.011  # captured by the lambda: it travels by value

    with serve_model("my-lj", lambda: LennardJones(sigma=sigma, epsilon=epsilon, rc=9.0),
                     broker=bus) as served:
        assert private.service(bus, "my-lj")["workers"] == 1
        assert not list((private.run_dir / "mlipx" / "factories").iterdir())  # read, deleted
        client = private.run(sys.executable, "-c", textwrap.dedent(ENERGY_OF), "my-lj", bus)
        assert client.returncode == 0, client.stderr
        atoms = bulk("Ar", "fcc", a=5.2, cubic=True)
        atoms.calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=9.0)
        assert json.loads(client.stdout) == pytest.approx(atoms.get_potential_energy(),
                                                          abs=1e-12)
        pid = served.pid
    assert not private.worker_alive(pid)
    private.wait_until(lambda: private.service(bus, "my-lj")["workers"] == 0,
                       "the broker to forget the stopped worker")


STARTER = """
    import sys
    from ase.calculators.emt import EMT
    from mlipx_serve import serve_model

    served = serve_model("short-lived", EMT, broker=sys.argv[1], idle_timeout=None)
    print(served.pid, flush=True)
"""


def test_the_worker_leaves_when_the_process_that_started_it_ends(private):
    bus = private.broker()
    starter = private.run(sys.executable, "-c", textwrap.dedent(STARTER), bus)
    assert starter.returncode == 0, starter.stderr
    pid = int(starter.stdout.split()[-1])
    assert private.wait_gone([pid]) == []


def test_a_factory_that_fails_says_why(private):
    bus = private.broker()

    def broken():
        raise RuntimeError("weights not found at /nonexistent/model.pt")

    with pytest.raises(ModelStartError, match="weights not found at /nonexistent/model.pt"):
        serve_model("broken", broken, broker=bus, start_timeout=60)
    assert not list((private.run_dir / "mlipx" / "factories").iterdir())


def test_no_broker_no_worker(private):
    with pytest.raises(ModelStartError, match="no model broker answers"):
        serve_model("x", LennardJones, broker=private.ipc("nobody.ipc"))


@pytest.mark.parametrize("name", ["", "mmi.mine"])
def test_names_the_broker_would_refuse_are_refused_here(name):
    with pytest.raises(ValueError, match="cannot name a model"):
        serve_model(name, LennardJones)


def test_a_factory_file_others_can_read_is_not_unpickled(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = write_factory(LennardJones)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by you alone"):
        load_factory(path)
    path.chmod(0o600)
    assert load_factory(path) is LennardJones
    assert not path.exists()
