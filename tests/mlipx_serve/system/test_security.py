"""CURVE through mlipx_serve: a model broker on tcp that encrypts and admits listed keys.

Keys come from ``mdp keys``; the broker, the workers and the command-line clients are real
processes. A client or worker whose keys do not fit is never answered, so its waits are
short. The test process reaches a CURVE broker the way scripts do, through the
``MLIPX_SERVE_CURVE_*`` variables, which ``monkeypatch`` sets (children never inherit them:
the conftest strips them, so each child gets exactly the keys a test gives it).
"""

from __future__ import annotations

import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zmq
from ase.build import bulk
from ase.calculators.emt import EMT
from support import HELPERS

from mdp.errors import RequestTimeout
from mlipx_serve import RemoteCalculator, get_broker_status
from mlipx_serve.broker.launch import worker_env
from mlipx_serve.environment import CURVE as CURVE_ENV
from mlipx_serve.environment import CURVE_SECRET_KEY as CURVE_SECRET_KEY_ENV
from mlipx_serve.environment import CURVE_SERVER_KEY as CURVE_SERVER_KEY_ENV
from mlipx_serve.errors import ServingError

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")]

MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
MDP = [sys.executable, "-m", "mdp.cli"]
USE_SERVE = HELPERS / "use_serve.py"
REFUSED = 0.5  # seconds a refused client waits for the reply that never comes


@dataclass
class Keys:
    broker: Path  # the broker's pair, broker.key_secret
    broker_public: Path  # broker.key, what clients and workers know the broker by
    head: Path  # a client's pair (head node), admitted
    gpu: Path  # a worker's pair (GPU node), admitted
    stranger: Path  # a valid pair the broker was not told about
    clients: Path  # the admitted public keys: head.key and gpu.key


@pytest.fixture
def system(monkeypatch: pytest.MonkeyPatch, serve_system: ServeSystem) -> ServeSystem:
    """``serve_system``, set up after ``monkeypatch``, so it closes while the keys are set."""
    for variable in CURVE_ENV:
        monkeypatch.delenv(variable, raising=False)
    return serve_system


@pytest.fixture
def keys(system: ServeSystem) -> Keys:
    folder = system.directory / "keys"
    for name in ("broker", "head", "gpu", "stranger"):
        made = system.run(*MDP, "keys", str(folder), name)
        assert made.returncode == 0, made.stderr
    clients = folder / "clients"
    clients.mkdir()
    for name in ("head", "gpu"):
        shutil.copy(folder / f"{name}.key", clients)
    return Keys(folder / "broker.key_secret", folder / "broker.key", folder / "head.key_secret",
                folder / "gpu.key_secret", folder / "stranger.key_secret", clients)


def free_tcp_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def key_env(keys: Keys, secret: Path | None = None) -> dict[str, str]:
    return {CURVE_SERVER_KEY_ENV: str(keys.broker_public),
            CURVE_SECRET_KEY_ENV: str(secret or keys.head)}


def use_keys(monkeypatch: pytest.MonkeyPatch, keys: Keys) -> None:
    for variable, value in key_env(keys).items():
        monkeypatch.setenv(variable, value)


def curve_broker(system: ServeSystem, keys: Keys, *options: str) -> str:
    """``serve-broker`` on a free tcp port with CURVE; returns once it answers the head."""
    endpoint = free_tcp_endpoint()
    args = [*MLIPX, "serve-broker", "--path", endpoint, "--heartbeat", "0.3",
            "--curve-secret-key", str(keys.broker), "--curve-clients", str(keys.clients),
            *options]
    proc = system.spawn("broker", args)
    system.brokers[endpoint] = proc

    def answers() -> bool:
        assert proc.alive(), f"the broker exited early:\n{proc.log()}"
        return get_broker_status(endpoint, timeout=1.0, curve_server_key=keys.broker_public,
                                 curve_secret_key=keys.head)["running"]

    system.wait_until(answers, f"a CURVE broker at {endpoint}")
    return endpoint


def assert_emt_results(calc) -> None:
    """Energy, forces and stress of a Cu cell, bit for bit those of a local EMT."""
    served, local = bulk("Cu", cubic=True), bulk("Cu", cubic=True)
    served.rattle(0.05, seed=1)
    local.positions[:] = served.positions
    served.calc, local.calc = calc, EMT()
    assert served.get_potential_energy() == local.get_potential_energy()
    np.testing.assert_array_equal(served.get_forces(), local.get_forces())
    np.testing.assert_array_equal(served.get_stress(), local.get_stress())


def serve_status(system: ServeSystem, endpoint: str, *options: str, **env: str):
    return system.run(*MLIPX, "serve-status", "--broker", endpoint, *options, **env)


# ------------------------------------------------------------ a worker started by hand


def test_keyed_worker_and_clients_compute_and_others_get_nothing(system, keys, monkeypatch):
    endpoint = curve_broker(system, keys)
    system.spawn("worker-emt", [*MLIPX, "serve", "emt", "--broker", endpoint, "--heartbeat",
                                "0.3"], **key_env(keys, keys.gpu))  # its keys from the env
    use_keys(monkeypatch, keys)
    system.wait_workers(endpoint, "emt", 1)
    calc = RemoteCalculator("emt", endpoint, timeout=30.0)
    assert_emt_results(calc)
    calc.close()
    script = system.run(sys.executable, str(USE_SERVE), MLIPX_USE_SERVE="true",
                        MLIPX_SERVE_BROKER=endpoint, **key_env(keys))
    assert script.returncode == 0, script.stderr
    assert script.stdout.split()[0] == "RemoteCalculator"
    with monkeypatch.context() as bare:
        for variable in CURVE_ENV:
            bare.delenv(variable)
        plain = RemoteCalculator("emt", endpoint, timeout=REFUSED)
        with pytest.raises(ServingError) as caught:
            assert_emt_results(plain)
        assert isinstance(caught.value.__cause__, RequestTimeout)
        plain.close()


def test_serve_status_needs_admitted_keys(system, keys):
    endpoint = curve_broker(system, keys)
    keyed = ["--curve-server-key", str(keys.broker_public), "--curve-secret-key", str(keys.head)]
    cases = [((), {}), ((), key_env(keys, keys.stranger)), (keyed, {}),
             ((), {CURVE_SERVER_KEY_ENV: str(keys.clients / "no.key")})]
    with ThreadPoolExecutor(len(cases)) as pool:  # the refused ones wait out their timeout
        runs = list(pool.map(lambda case: serve_status(system, endpoint, *case[0], **case[1]),
                             cases))
    plain, stranger, admitted, missing = runs
    assert plain.returncode == 1 and "CURVE" in plain.stdout
    assert stranger.returncode == 1
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    assert "running" in admitted.stdout
    said = " ".join(missing.stderr.replace("│", " ").split())
    assert missing.returncode == 2  # a usage error, naming the variable that points nowhere
    assert "(env var: 'MLIPX_SERVE_CURVE_SERVER_KEY')" in said and "does not exist" in said


# ------------------------------------------------------------ autostart


def test_autostarted_worker_uses_the_brokers_own_keys(system, keys, monkeypatch):
    use_keys(monkeypatch, keys)
    endpoint = curve_broker(system, keys, "--autostart")
    calc = RemoteCalculator("emt", endpoint, timeout=60.0)
    assert_emt_results(calc)
    calc.close()
    assert system.service(endpoint, "emt")["workers"] == 1
    # its own key admitted in memory: the clients directory untouched, no copy of it
    assert sorted(p.name for p in keys.clients.iterdir()) == ["gpu.key", "head.key"]
    assert list((system.run_dir / "mlipx").glob("curve-clients-*")) == []
    code, pids = system.stop_broker(endpoint)
    assert code == 0 and len(pids) == 1
    assert system.wait_gone(pids) == []


def test_started_workers_do_not_inherit_the_client_keys(keys, monkeypatch):
    use_keys(monkeypatch, keys)  # a broker started from a shell set up for scripts
    monkeypatch.setenv("MLIPX_SERVE_TIMEOUT", "5")
    env = worker_env()
    assert not set(CURVE_ENV) & set(env)
    assert env["MLIPX_SERVE_TIMEOUT"] == "5"
