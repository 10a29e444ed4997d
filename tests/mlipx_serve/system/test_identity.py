"""A served model is the model the client defined: real brokers, workers and calculators.

Each test compares what a served calculation gives with the same definition computed here,
and looks at which service the broker counted it on.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from support import HELPERS, free_port

from mlipx_serve import GenericASECalculator, RemoteCalculator, ServingError, evaluate
from mlipx_serve.errors import DefinitionMismatch, ServiceStartFailedError
from mlipx_serve.models.models_file import load_models_file

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(120)

MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
EXACT = 1e-12


def cu():
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=4)
    return atoms


def energy(calc) -> float:
    atoms = cu()
    atoms.calc = calc
    return atoms.get_potential_energy()


def lj(sigma: float = 2.3, **fields) -> GenericASECalculator:
    return GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                kwargs={"sigma": sigma}, **fields)


@pytest.fixture
def use_bus(bus: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's autostart broker as this process's default one."""
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    return bus


def served_on(system: ServeSystem, bus: str, service: str) -> int:
    return system.service(bus, service)["served"]


def test_a_name_shared_with_a_builtin_gets_the_model_defined(use_bus: str,
                                                              shared_system: ServeSystem):
    model = lj(name="emt")
    calc = model.get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator)
    assert calc.model.startswith("emt@")
    emt_before = served_on(shared_system, use_bus, "emt")
    assert energy(calc) == pytest.approx(energy(LennardJones(sigma=2.3)), abs=EXACT)
    assert energy(calc) != pytest.approx(energy(EMT()), abs=1e-3)  # (ASE's cache: no call)
    assert served_on(shared_system, use_bus, calc.model) == 1
    assert served_on(shared_system, use_bus, "emt") == emt_before


def test_the_same_definition_is_served_under_its_plain_name(use_bus: str,
                                                            shared_system: ServeSystem):
    calc = GenericASECalculator(module="ase.calculators.emt", class_name="EMT",
                                name="emt").get_calculator(use_serve=True)
    unnamed = GenericASECalculator(module="ase.calculators.emt",
                                   class_name="EMT").get_calculator(use_serve=True)
    assert (calc.model, unnamed.model) == ("emt", "emt")
    before = shared_system.service(use_bus, "emt")
    assert energy(calc) == pytest.approx(energy(EMT()), abs=EXACT)
    assert energy(unnamed) == pytest.approx(energy(EMT()), abs=EXACT)
    after = shared_system.service(use_bus, "emt")
    assert (after["served"], after["failed"]) == (before["served"] + 2, before["failed"])


def test_an_unnamed_definition_is_served_by_a_worker_of_its_own(use_bus: str,
                                                                shared_system: ServeSystem):
    model = lj(2.6)
    first = model.get_calculator(use_serve=True)
    service = first.model
    assert service == model.definition().own_service()
    assert service.startswith("LennardJones@")
    for count in (1, 2):
        calc = model.get_calculator(use_serve=True)
        assert energy(calc) == pytest.approx(energy(LennardJones(sigma=2.6)), abs=EXACT)
        assert served_on(shared_system, use_bus, service) == count
    status = json.loads(shared_system.run(*MLIPX, "serve-status", "--json",
                                          "--broker", use_bus).stdout)
    entry = status["autostart"]["models"][service]
    assert entry["defined_by"] == "client"
    assert entry["fingerprint"] == model.definition().fingerprint
    assert entry["definition"]["kwargs"] == {"sigma": 2.6}
    [worker] = [w for w in status["status"]["workers"] if w["service"] == service]
    assert worker["metadata"]["fingerprint"] == model.definition().fingerprint


def test_a_models_file_on_the_broker_and_another_definition_of_the_name(
        serve_system: ServeSystem, monkeypatch: pytest.MonkeyPatch):
    models = serve_system.directory / "models.py"
    models.write_text(textwrap.dedent("""
        from mlipx_serve import GenericASECalculator
        ALL_MODELS = {"my-lj": GenericASECalculator(
            module="ase.calculators.lj", class_name="LennardJones", kwargs={"sigma": 2.3})}
    """))
    bus = serve_system.broker("--autostart", "--models", str(models))
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    same = lj(2.3, name="my-lj").get_calculator(use_serve=True)
    other = lj(2.5, name="my-lj").get_calculator(use_serve=True)
    assert same.model == "my-lj"
    assert other.model.startswith("my-lj@")
    assert energy(same) == pytest.approx(energy(LennardJones(sigma=2.3)), abs=EXACT)
    assert energy(other) == pytest.approx(energy(LennardJones(sigma=2.5)), abs=EXACT)
    assert serve_system.service(bus, "my-lj")["served"] == 1
    assert serve_system.service(bus, other.model)["served"] == 1


def test_relative_checkpoint_paths_open_the_same_file_wherever_the_worker_runs(
        serve_system: ServeSystem, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    project, script, elsewhere = (tmp_path / name for name in ("project", "script", "else"))
    for folder, sigma in ((project, 2.2), (script, 2.7), (elsewhere, 9.9)):
        folder.mkdir()
        (folder / "lj.json").write_text(json.dumps({"sigma": sigma}))
    (project / "models.py").write_text(textwrap.dedent("""
        from mlipx_serve import GenericASECalculator
        ALL_MODELS = {"ckpt": GenericASECalculator(
            module="checkpoint_models", class_name="CheckpointLJ", kwargs={"path": "./lj.json"})}
    """))
    # The broker and its workers run in a folder with a checkpoint of the same name.
    serve_system.spawn("broker", [*MLIPX, "serve-broker", "--autostart", "--path",
                                  serve_system.ipc("ckpt.ipc"), "--models",
                                  str(project / "models.py"), "--heartbeat", "0.3"],
                       cwd=elsewhere, PYTHONPATH=str(HELPERS))
    bus = serve_system.ipc("ckpt.ipc")
    serve_system.wait_until(lambda: serve_system.status(bus)["running"], "the broker")
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    monkeypatch.syspath_prepend(str(HELPERS))
    monkeypatch.chdir(script)
    from checkpoint_models import CheckpointLJ

    from_file = load_models_file(project / "models.py")["ckpt"]
    calc = from_file.get_calculator(use_serve=True)
    assert calc.model == "ckpt"
    assert energy(calc) == pytest.approx(energy(CheckpointLJ(str(project / "lj.json"))),
                                         abs=EXACT)
    inline = GenericASECalculator(module="checkpoint_models", class_name="CheckpointLJ",
                                  kwargs={"path": "./lj.json"}, name="ckpt")
    calc = inline.get_calculator(use_serve=True)
    assert calc.model.startswith("ckpt@")
    assert energy(calc) == pytest.approx(energy(CheckpointLJ(str(script / "lj.json"))),
                                         abs=EXACT)
    assert energy(calc) != pytest.approx(energy(CheckpointLJ(str(project / "lj.json"))))


def test_a_checkpoint_written_anew_is_another_model(serve_system: ServeSystem,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path):
    """As an active-learning loop does: retrain, write the checkpoint to the same path."""
    bus = serve_system.ipc("loop.ipc")
    serve_system.spawn("broker", [*MLIPX, "serve-broker", "--autostart", "--path", bus,
                                  "--heartbeat", "0.3"], PYTHONPATH=str(HELPERS))
    serve_system.wait_until(lambda: serve_system.status(bus)["running"], "the broker")
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    monkeypatch.syspath_prepend(str(HELPERS))
    monkeypatch.chdir(tmp_path)
    from checkpoint_models import CheckpointLJ

    model = GenericASECalculator(module="checkpoint_models", class_name="CheckpointLJ",
                                 kwargs={"path": "./model.json"}, name="loop")
    served = []
    for sigma in (2.1, 2.6):
        (tmp_path / "model.json").write_text(json.dumps({"sigma": sigma}))
        calc = model.get_calculator(use_serve=True)
        assert isinstance(calc, RemoteCalculator)
        assert energy(calc) == pytest.approx(energy(CheckpointLJ("model.json")), abs=EXACT)
        served.append(calc.model)
    assert served[0] != served[1]  # the new checkpoint's worker, not the old one's


def test_a_worker_whose_checkpoint_changed_since_its_definition_refuses_to_serve(
        serve_system: ServeSystem, tmp_path: Path):
    checkpoint = tmp_path / "model.json"
    checkpoint.write_text(json.dumps({"sigma": 2.1}))
    defined = GenericASECalculator(module="checkpoint_models", class_name="CheckpointLJ",
                                   kwargs={"path": str(checkpoint)}, name="loop").definition()
    checkpoint.write_text(json.dumps({"sigma": 2.6}))  # between the request and the start
    run = serve_system.run(*MLIPX, "serve", "loop", "--no-uv", "--definition",
                           json.dumps(defined.to_json()), "--broker",
                           serve_system.ipc("nobody.ipc"), PYTHONPATH=str(HELPERS))
    said = " ".join(run.stderr.split())
    assert run.returncode != 0 and f"{checkpoint} changed since model 'loop' was defined" \
        in said, said


def test_a_worker_that_cannot_even_be_started_fails_its_requests_at_once(
        use_bus: str, caplog):
    """A definition longer than a command line may be: the start itself raises."""
    model = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                 kwargs={"sigma": 2.35, "note": "x" * 3_000_000})
    calc = model.get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator)
    with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
        assert energy(calc) == pytest.approx(energy(LennardJones(sigma=2.35)), abs=EXACT)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "is computed locally from now on" in warning and "could not start" in warning
    assert "Argument list too long" in warning


def test_a_calculator_defines_its_model_again_at_a_broker_that_restarted(
        serve_system: ServeSystem, monkeypatch: pytest.MonkeyPatch):
    bus = serve_system.broker("--autostart", path="restart.ipc")
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    calc = lj(2.45).get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator)
    assert energy(calc) == pytest.approx(energy(LennardJones(sigma=2.45)), abs=EXACT)
    serve_system.stop_broker(bus)
    assert serve_system.broker("--autostart", path="restart.ipc") == bus  # it knows nothing
    atoms = cu()
    atoms.positions[0] += 0.1  # (a new calculation)
    local = atoms.copy()
    local.calc = LennardJones(sigma=2.45)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(local.get_potential_energy(),
                                                         abs=EXACT)
    assert calc._local is None  # served, not fallen back
    assert serve_system.service(bus, calc.model)["served"] == 1


def test_a_request_for_another_model_sent_by_hand_is_refused_and_the_worker_goes_on(
        bus: str, shared_system: ServeSystem):
    with RemoteCalculator("emt", bus) as plain:
        expected = energy(plain)
    failed = shared_system.service(bus, "emt")["failed"]
    pids = shared_system.started_pids(bus)
    with RemoteCalculator("emt", bus, definition=lj().definition()) as wrong:
        with pytest.raises(DefinitionMismatch) as caught:
            energy(wrong)
    message = str(caught.value)
    assert "this worker serves ase.calculators.emt:EMT" in message
    assert "kwargs.sigma: absent here, 2.3 asked" in message
    assert 'class_name: "EMT" here, "LennardJones" asked' in message
    assert shared_system.service(bus, "emt")["failed"] == failed + 1
    with RemoteCalculator("emt", bus) as plain:
        assert energy(plain) == expected
    assert shared_system.started_pids(bus) == pids  # the same worker, still serving


def autostart_broker_at(system: ServeSystem, endpoint: str, monkeypatch, *options: str):
    """A broker at ``endpoint`` (any kind), this process's default from now on."""
    system.spawn("broker", [*MLIPX, "serve-broker", "--autostart", "--path", endpoint,
                            "--heartbeat", "0.3", *options])
    system.wait_until(lambda: system.status(endpoint)["running"], "the broker")
    monkeypatch.setenv("MLIPX_SERVE_BROKER", endpoint)


def refused_and_local(caplog, sigma: float) -> str:
    """Define a model the broker has not: computed locally; the warning that says why."""
    with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
        calc = lj(sigma).get_calculator(use_serve=True)
    assert isinstance(calc, LennardJones)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "is computed locally" in warning
    return warning


def test_a_plain_tcp_endpoint_takes_no_definitions_unless_told(
        serve_system: ServeSystem, monkeypatch: pytest.MonkeyPatch, caplog):
    autostart_broker_at(serve_system, f"tcp://127.0.0.1:{free_port()}", monkeypatch)
    assert "--accept-definitions" in refused_and_local(caplog, 2.4)
    # a built-in model by its identical definition needs no new worker: served
    assert GenericASECalculator(module="ase.calculators.emt", class_name="EMT"
                                ).get_calculator(use_serve=True).model == "emt"

    autostart_broker_at(serve_system, f"tcp://127.0.0.1:{free_port()}", monkeypatch,
                        "--accept-definitions")
    calc = lj(2.4).get_calculator(use_serve=True)
    assert calc.model.startswith("LennardJones@")
    assert energy(calc) == pytest.approx(energy(LennardJones(sigma=2.4)), abs=EXACT)


def test_an_abstract_socket_takes_no_definitions(serve_system: ServeSystem,
                                                monkeypatch: pytest.MonkeyPatch, caplog):
    """Any local user can connect to an abstract socket: what it sends is not ours."""
    autostart_broker_at(serve_system, f"ipc://@mlipx-test-{free_port()}", monkeypatch)
    assert "abstract socket" in refused_and_local(caplog, 2.45)


def test_a_defined_model_whose_worker_cannot_start_falls_back_to_local_once(
        use_bus: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog):
    """The broker's workers cannot import the helpers' module; this process can."""
    monkeypatch.syspath_prepend(str(HELPERS))
    (tmp_path / "lj.json").write_text(json.dumps({"sigma": 2.1}))
    from checkpoint_models import CheckpointLJ

    model = GenericASECalculator(module="checkpoint_models", class_name="CheckpointLJ",
                                 kwargs={"path": str(tmp_path / "lj.json")})
    calc = model.get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator)
    local = CheckpointLJ(str(tmp_path / "lj.json"))
    with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
        assert energy(calc) == pytest.approx(energy(local), abs=EXACT)
        assert energy(calc) == pytest.approx(energy(local), abs=EXACT)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "is computed locally from now on" in warning
    assert "No module named 'checkpoint_models'" in warning  # the worker's own error
    forced = RemoteCalculator(calc.model, use_bus, definition=model.definition())
    with pytest.raises(ServiceStartFailedError, match="checkpoint_models"):
        energy(forced)


def test_a_name_an_autostart_broker_cannot_serve_is_answered_at_once(
        bus: str, shared_system: ServeSystem):
    with RemoteCalculator("emtt", bus) as calc, pytest.raises(ServingError) as caught:
        energy(calc)
    message = str(caught.value)
    assert "no model of that name to start" in message
    assert "it offers emt, " in message  # the closest name first
    assert "mlipx serve emtt --models FILE" in message


def test_evaluate_takes_a_definition_and_computes_exactly_it(use_bus: str,
                                                             shared_system: ServeSystem):
    model = lj(2.45, name="lj-map")
    structures = []
    for seed in range(6):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    results = evaluate(model, structures, progress=False)
    for atoms, result in zip(structures, results, strict=True):
        atoms.calc = LennardJones(sigma=2.45)
        assert result.get_potential_energy() == pytest.approx(atoms.get_potential_energy(),
                                                              abs=EXACT)
    assert served_on(shared_system, use_bus, model.definition().own_service()) == 6
