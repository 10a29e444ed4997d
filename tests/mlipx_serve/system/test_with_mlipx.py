"""The integration with the real mlipx 0.1.5, in an environment that has both.

Every check runs as a user would: a script or command in that environment (built once and
cached by ``helpers/mlipx_env.py``), against a broker of the test's own. Without the
package index the environment cannot be built and these tests skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from support import HELPERS, load_module

from mlipx_serve import GenericASECalculator

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

mlipx_env = load_module(HELPERS / "mlipx_env.py", "mlipx_env")
EXACT = 1e-12
QUIET = {"PYTHONWARNINGS": "ignore"}  # mlipx's imports warn (eventlet, ...) on stderr


@pytest.fixture(scope="module")
def env() -> Path:
    try:
        return mlipx_env.ensure()
    except mlipx_env.EnvUnavailable as error:
        pytest.skip(f"needs a virtual environment with {mlipx_env.MLIPX}, which cannot be "
                    f"built here: {error}")


@pytest.fixture(scope="module")
def emt_bus(shared_system: ServeSystem) -> str:
    return shared_system.broker("--autostart")


def run_script(env: Path, system: ServeSystem, source: str, *args: str, **variables: str):
    script = system.directory / f"script-{len(list(system.directory.glob('script-*')))}.py"
    script.write_text(textwrap.dedent(source))
    return system.run(str(mlipx_env.python_of(env)), str(script), *args, timeout=300,
                      **{**QUIET, **variables})


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def served(system: ServeSystem, endpoint: str, model: str = "emt") -> int:
    return system.service(endpoint, model)["served"]


def local_energy(atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy()


# ------------------------------------------------------------ the page's Python

PAGE_PYTHON = """
    import json
    from ase.build import bulk
    from mlipx import GenericASECalculator

    model = GenericASECalculator(
        module="mace.calculators",
        class_name="mace_mp",
        device="auto",
        name="mace-mpa-0",
        extra=["mace"],
    )
    emt = GenericASECalculator(module="ase.calculators.emt", class_name="EMT", name="emt")
    calculators = {
        "served": emt.get_calculator(use_serve=True),
        "local": emt.get_calculator(use_serve=False),
        "default": emt.get_calculator(),  # follows MLIPX_USE_SERVE
    }

    from mlipx.serve import Models

    models = Models()
    listed = list(models)
    if "emt" in models:
        calculators["models"] = models["emt"].get_calculator()
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.02, seed=3)
    energies = {}
    for label, calc in calculators.items():
        copy = atoms.copy()
        copy.calc = calc
        energies[label] = copy.get_potential_energy()
    print(json.dumps({
        "types": {label: type(calc).__name__ for label, calc in calculators.items()},
        "mace": [model.module, model.class_name, model.device, model.kwargs, model.spec,
                 model.name, model.extra, type(model).__module__],
        "listed": listed, "energies": energies,
    }))
"""


@pytest.mark.parametrize("use_serve, default", [("true", "RemoteCalculator"), ("", "EMT")])
def test_the_pages_python_works_verbatim(env, shared_system, emt_bus, use_serve, default):
    before = served(shared_system, emt_bus)
    run = run_script(env, shared_system, PAGE_PYTHON, MLIPX_SERVE_BROKER=emt_bus,
                     MLIPX_USE_SERVE=use_serve)
    assert run.returncode == 0, run.stderr
    found = last_json(run.stdout)
    assert found["types"] == {"served": "RemoteCalculator", "local": "EMT", "default": default,
                              "models": "RemoteCalculator"}
    assert found["mace"] == ["mace.calculators", "mace_mp", "auto", None, None, "mace-mpa-0",
                             ["mace"], "mlipx.nodes.generic_ase"]
    assert "emt" in found["listed"]
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.02, seed=3)
    for energy in found["energies"].values():
        assert energy == pytest.approx(local_energy(atoms), abs=EXACT)
    remote_calls = 3 if default == "RemoteCalculator" else 2
    assert served(shared_system, emt_bus) == before + remote_calls


def test_use_serve_without_a_broker_computes_locally_and_says_why(env, shared_system):
    run = run_script(env, shared_system, PAGE_PYTHON, MLIPX_SERVE_BROKER=shared_system.ipc(
        "nobody-here.ipc"))
    assert run.returncode == 0, run.stderr
    found = last_json(run.stdout)
    assert found["types"]["served"] == "EMT"
    assert "no model broker answers" in run.stderr
    assert "is computed locally" in run.stderr


def test_the_integration_turns_off(env, shared_system):
    run = run_script(env, shared_system, """
        import dataclasses, json, sys
        import mlipx
        fields = [f.name for f in dataclasses.fields(mlipx.GenericASECalculator)]
        try:
            import mlipx.serve
            serve = "importable"
        except ModuleNotFoundError:
            serve = "missing"
        print(json.dumps({"fields": fields, "serve": serve}))
    """, MLIPX_SERVE_HOOK="0")
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout) == {"fields": ["module", "class_name", "kwargs", "device",
                                                "spec"], "serve": "missing"}


def test_without_mlipx_imported_nothing_is_loaded(env, shared_system):
    run = run_script(env, shared_system, """
        import json, sys
        loaded = sorted(name for name in sys.modules
                        if name.split(".")[0] in ("mlipx", "mlipx_serve", "mdp", "zmq", "ase",
                                                  "numpy"))
        print(json.dumps(loaded))
    """)
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout) == ["mlipx_serve", "mlipx_serve.environment",
                                     "mlipx_serve.mlipx_glue", "mlipx_serve.mlipx_glue.hook",
                                     "mlipx_serve.mlipx_hook"]


# ------------------------------------------------------------ models files

PAGE_MODELS_FILE = """
import mlipx
from mlipx import GenericASECalculator

ALL_MODELS = {}
ALL_MODELS["chgnet"] = GenericASECalculator(
    module="chgnet.model.model",
    class_name="CHGNet",
    device="auto",
    extra=["chgnet"],
)
ALL_MODELS["emt-page"] = mlipx.GenericASECalculator(
    module="ase.calculators.emt",
    class_name="EMT",
    extra=[],
)

# Auto-inject model names for serve integration
for _model_key, _model_instance in ALL_MODELS.items():
    if hasattr(_model_instance, 'name') and _model_instance.name is None:
        _model_instance.name = _model_key
"""


def test_a_models_file_written_as_the_page_shows(env, serve_system):
    models = serve_system.directory / "models.py"
    models.write_text(PAGE_MODELS_FILE)
    bus = serve_system.broker()
    # mlipx's own way to read it: the name loop works on mlipx's (extended) class ...
    run = run_script(env, serve_system, f"""
        import json, runpy
        found = runpy.run_path({str(models)!r})["ALL_MODELS"]
        print(json.dumps({{key: [model.name, model.extra, type(model).__module__]
                          for key, model in found.items()}}))
    """)
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout) == {
        "chgnet": ["chgnet", ["chgnet"], "mlipx.nodes.generic_ase"],
        "emt-page": ["emt-page", [], "mlipx.nodes.generic_ase"]}
    # ... and `mlipx serve --models` serves it, in the environment that has mlipx.
    serve_system.spawn("worker", [str(env / "bin" / "mlipx"), "serve", "emt-page",
                                  "--models", str(models), "--broker", bus,
                                  "--heartbeat", "0.3"], **QUIET)
    serve_system.wait_workers(bus, "emt-page", 1)
    from mlipx_serve import RemoteCalculator

    atoms = bulk("Cu", cubic=True)
    atoms.calc = RemoteCalculator("emt-page", bus, timeout=30)
    assert atoms.get_potential_energy() == pytest.approx(local_energy(atoms), abs=EXACT)


# ------------------------------------------------------------ one mlipx command


def command_text(run) -> str:
    return " ".join((run.stdout + run.stderr).split())  # rich wraps long lines


@pytest.mark.parametrize("installed_last, script_imports", [
    ("mlipx", "from mlipx.cli.main import app"),
    ("mlipx-serve", "from mlipx_serve.cli import main"),
])
def test_one_mlipx_command_whichever_package_installed_it_last(env, shared_system, emt_bus,
                                                                installed_last, script_imports):
    if installed_last == "mlipx":
        mlipx_env.reinstall_mlipx(env)
    else:
        mlipx_env.install_project(env)
    mlipx = env / "bin" / "mlipx"
    assert script_imports in mlipx.read_text()
    try:
        helped = shared_system.run(str(mlipx), "--help", **QUIET)
        assert helped.returncode == 0, helped.stderr
        for command in ("serve-broker", "serve-status", "serve ", "info", "recipes",
                        "benchmark"):
            assert command in helped.stdout
        status = shared_system.run(str(mlipx_env.python_of(env)), "-X", "importtime",
                                   str(mlipx), "serve-status", "--broker", emt_bus, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["running"] is True
        # fast and quiet: a serve command never loads mlipx's command line, whichever
        # script runs it (and so neither its seconds of imports nor their warnings)
        imported = [line.rpartition("|")[2].strip() for line in status.stderr.splitlines()
                    if line.startswith("import time:")]
        assert "mlipx_serve.cli.status" in imported
        assert not {"zntrack", "mlipx.nodes", "mlipx.abc"} & set(imported)
        assert "Warning" not in status.stderr
    finally:
        mlipx_env.install_project(env)


def test_a_broken_mlipx_command_line_shows_its_error_and_serving_still_works(
        env, shared_system, emt_bus):
    # The pinned asebytes less BytesIO, as asebytes 0.3 is, in front of it on the path:
    # mlipx's command line then fails to import as it does in an environment without the pin.
    [real] = env.glob("lib/python*/site-packages/asebytes")
    shadow = shared_system.directory / "shadow"
    (shadow / "asebytes").mkdir(parents=True, exist_ok=True)
    (shadow / "asebytes" / "__init__.py").write_text(textwrap.dedent(f"""
        __path__ = [{str(real)!r}]
        exec(compile(open(__path__[0] + "/__init__.py").read(), __path__[0], "exec"))
        del BytesIO, __getattr__
    """))
    mlipx = str(env / "bin" / "mlipx")
    broken = {"PYTHONPATH": str(shadow), **QUIET}
    helped = shared_system.run(mlipx, "--help", **broken)
    assert helped.returncode == 0
    assert "serve-broker" in helped.stdout
    said = command_text(helped)
    assert "mlipx is installed, but its command line failed to load" in said
    assert "cannot import name 'BytesIO' from 'asebytes'" in said
    other = shared_system.run(mlipx, "info", **broken)
    assert other.returncode == 2
    assert "BytesIO" in command_text(other)
    status = shared_system.run(mlipx, "serve-status", "--broker", emt_bus, **broken)
    assert status.returncode == 0, status.stderr


# ------------------------------------------------------------ mlipx's own nodes

RELAX = """
    import json, os, sys
    import ase.build
    import mlipx

    os.makedirs("nodes", exist_ok=True)
    atoms = ase.build.bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    model = mlipx.GenericASECalculator(module="ase.calculators.emt", class_name="EMT")
    node = mlipx.StructureOptimization(data=[atoms], model=model, optimizer="BFGS",
                                       fmax=0.01)
    node.run()
    print(json.dumps(node.plots["energy"].tolist()))
"""


def test_use_serve_reaches_mlipx_structure_optimization(env, shared_system, emt_bus):
    """An unnamed EMT model: defined exactly like the built-in "emt", served as it."""
    workdir = shared_system.directory / "relax"
    workdir.mkdir(exist_ok=True)
    energies = {}
    for use_serve in ("true", "false"):
        before = served(shared_system, emt_bus)
        run = run_script(env, shared_system, f"import os; os.chdir({str(workdir)!r})\n"
                         + textwrap.dedent(RELAX), MLIPX_SERVE_BROKER=emt_bus,
                         MLIPX_USE_SERVE=use_serve)
        assert run.returncode == 0, run.stderr
        energies[use_serve] = last_json(run.stdout)
        calls = served(shared_system, emt_bus) - before
        assert calls == (len(energies[use_serve]) if use_serve == "true" else 0)
    assert len(energies["true"]) > 3
    assert energies["true"] == pytest.approx(energies["false"], abs=1e-10)


PIPELINE = """
    import mlipx

    project = mlipx.Project()
    emt = mlipx.GenericASECalculator(module="ase.calculators.emt", class_name="EMT", name="emt")
    # defined inline, without a name, like no model the broker has: a worker of its own
    lj = mlipx.GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                    kwargs={"sigma": 2.3, "epsilon": 0.3, "rc": 5.0})
    with project:
        data = mlipx.LoadDataFile(path="data.xyz")
        relax = mlipx.StructureOptimization(data=data.frames, model=emt, optimizer="BFGS",
                                            fmax=0.01, name="relax_emt")
        relax_lj = mlipx.StructureOptimization(data=data.frames, model=lj, optimizer="BFGS",
                                               fmax=0.01, name="relax_lj")
    project.build()
"""
INLINE_LJ = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                 kwargs={"sigma": 2.3, "epsilon": 0.3, "rc": 5.0})


def test_dvc_repro_of_an_mlipx_pipeline_uses_the_served_models(env, shared_system, emt_bus):
    """A named model served as the broker's, an unnamed inline one by a worker started
    from its definition: both follow the local trajectories."""
    if shutil.which("git") is None:
        pytest.skip("dvc repro needs git, which is not installed here")
    repo = shared_system.directory / "pipeline"
    repo.mkdir()
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.write(repo / "data.xyz")
    (repo / "main.py").write_text(textwrap.dedent(PIPELINE))
    path = f"{env / 'bin'}:{shared_system.env()['PATH']}"

    def sh(*args: str, **variables: str):
        done = shared_system.run(*args, cwd=repo, PATH=path, MLIPX_SERVE_BROKER=emt_bus,
                                 **QUIET, **variables)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh(str(mlipx_env.python_of(env)), "main.py")
    services = {"relax_emt": "emt", "relax_lj": INLINE_LJ.definition().own_service()}
    trajectories: dict[str, dict[str, list[float]]] = {}
    for use_serve in ("true", "false"):
        before = {node: served(shared_system, emt_bus, name) for node, name in services.items()}
        sh("dvc", "repro", "--force", MLIPX_USE_SERVE=use_serve)
        from ase.io import read

        for node, name in services.items():
            calls = served(shared_system, emt_bus, name) - before[node]
            assert (calls > 3) if use_serve == "true" else (calls == 0), (node, calls)
            frames = read(repo / "nodes" / node / "frames.traj", ":")
            trajectories.setdefault(node, {})[use_serve] = [
                frame.get_potential_energy() for frame in frames]
    for node, runs in trajectories.items():
        assert len(runs["true"]) > 3, node
        assert runs["true"] == pytest.approx(runs["false"], abs=1e-10), node
