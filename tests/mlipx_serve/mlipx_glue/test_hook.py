"""The start-up hook that attaches to mlipx, against a small stand-in mlipx package.

Each case runs a fresh interpreter (the hook acts at start-up, through the installed
``mlipx_serve_hook.pth``) with a stand-in ``mlipx`` on its path that has the parts the
hook touches, shaped like mlipx 0.1.5's. ``test_with_mlipx.py`` does the same against the
real mlipx where it can be installed; these run everywhere, and cover the odd cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import PROJECT

pytestmark = pytest.mark.timeout(60)

GENERIC_ASE = '''
import dataclasses
import importlib


@dataclasses.dataclass
class GenericASECalculator:
    """mlipx's, in short."""

    module: str
    class_name: str
    kwargs: dict | None = None
    device: str | None = None
    spec: str | None = None

    def get_calculator(self, **kwargs):
        if self.kwargs is not None:
            kwargs.update(self.kwargs)
        return getattr(importlib.import_module(self.module), self.class_name)(**kwargs)
'''
CLI = '''
import typer

app = typer.Typer()


@app.command()
def info():
    """mlipx's own command."""
'''


def stand_in_mlipx(root: Path, generic_ase: str = GENERIC_ASE, **extra_files: str) -> Path:
    files = {"__init__.py": "", "nodes/__init__.py": "", "nodes/generic_ase.py": generic_ase,
             "cli/__init__.py": "", "cli/main.py": CLI, **extra_files}
    for name, text in files.items():
        path = root / "mlipx" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(root: Path, source: str, **env: str) -> dict:
    variables = {"PYTHONPATH": str(root), "MLIPX_USE_SERVE": "", **env}  # the hook: unset, on
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, timeout=50, env={**_base_env(), **variables})
    assert done.returncode == 0, done.stderr
    return {"out": json.loads(done.stdout.strip().splitlines()[-1]), "err": done.stderr}


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("MLIPX")}


EXTENDED = """
    import dataclasses, json
    from mlipx import nodes
    import mlipx.nodes.generic_ase as generic_ase
    from mlipx.nodes.generic_ase import GenericASECalculator

    model = GenericASECalculator("ase.calculators.lj", "LennardJones", {"sigma": 2.0},
                                 name="lj-2", extra=[])
    calc = model.get_calculator(use_serve=False)
    print(json.dumps({
        "fields": [f.name for f in dataclasses.fields(GenericASECalculator)],
        "module": GenericASECalculator.__module__,
        "qualname": GenericASECalculator.__qualname__,
        "is_original": isinstance(model, GenericASECalculator.__mro__[2]),
        "calc": [type(calc).__name__, calc.parameters["sigma"]],
        "documented": "use_serve" in GenericASECalculator.__doc__,
    }))
"""


def test_mlipx_generic_calculator_gains_name_extra_and_use_serve(tmp_path):
    found = run(stand_in_mlipx(tmp_path), EXTENDED)["out"]
    assert found == {
        "fields": ["module", "class_name", "kwargs", "device", "spec", "name", "extra",
                   "serving"],
        "module": "mlipx.nodes.generic_ase", "qualname": "GenericASECalculator",
        "is_original": True, "calc": ["LennardJones", 2.0], "documented": True}


def test_mlipx_definitions_are_what_mlipx_builds(tmp_path):
    """The same model as ours, its kwargs over the call's as mlipx merges them; with no
    broker the warning says why it is computed here."""
    found = run(stand_in_mlipx(tmp_path), """
        import json
        import mlipx_serve
        from mlipx.nodes.generic_ase import GenericASECalculator

        theirs = GenericASECalculator("ase.calculators.lj", "LennardJones", {"sigma": 2.3})
        ours = mlipx_serve.GenericASECalculator(module="ase.calculators.lj",
                                                class_name="LennardJones", kwargs={"sigma": 2.3})
        calc = theirs.get_calculator()
        print(json.dumps({
            "same": theirs.definition().fingerprint == ours.definition().fingerprint,
            "merged": theirs.definition(sigma=9.0, rc=4.0).identity["kwargs"],
            "calc": type(calc).__name__,
        }))
    """, MLIPX_USE_SERVE="true", MLIPX_SERVE_BROKER=f"ipc://{tmp_path}/none.ipc")
    assert found["out"] == {"same": True, "merged": {"sigma": 2.3, "rc": 4.0},
                            "calc": "LennardJones"}
    assert "model 'ase.calculators.lj:LennardJones' is computed locally: no model broker " \
           "answers at" in found["err"]


def test_mlipx_serve_and_the_commands_are_ours(tmp_path):
    found = run(stand_in_mlipx(tmp_path), """
        import json
        import mlipx_serve
        from mlipx.serve import Models, serve_model
        from mlipx.cli.main import app
        print(json.dumps({
            "models": Models is mlipx_serve.Models,
            "serve_model": serve_model is mlipx_serve.serve_model,
            "commands": sorted(c.name or c.callback.__name__ for c in app.registered_commands),
        }))
    """)["out"]
    assert found == {"models": True, "serve_model": True,
                     "commands": ["info", "serve", "serve-broker", "serve-status",
                                  "serve-submit"]}


def test_turned_off_nothing_changes(tmp_path):
    found = run(stand_in_mlipx(tmp_path), """
        import dataclasses, json
        from mlipx.nodes.generic_ase import GenericASECalculator
        from mlipx.cli.main import app
        try:
            import mlipx.serve
            serve = True
        except ModuleNotFoundError:
            serve = False
        print(json.dumps([len(dataclasses.fields(GenericASECalculator)), serve,
                          len(app.registered_commands)]))
    """, MLIPX_SERVE_HOOK="off")["out"]
    assert found == [5, False, 1]


def test_an_mlipx_that_has_serving_of_its_own_is_left_alone(tmp_path):
    own = GENERIC_ASE.replace("    spec: str | None = None\n", "    spec: str | None = None\n"
                              "    name: str | None = None\n    extra: list | None = None\n")
    root = stand_in_mlipx(tmp_path, own, **{"serve.py": "OWN = True\n"})
    found = run(root, """
        import json
        import mlipx.serve
        from mlipx.nodes.generic_ase import GenericASECalculator
        print(json.dumps([getattr(mlipx.serve, "OWN", False), GenericASECalculator.__mro__[1]
                          is object]))
    """)["out"]
    assert found == [True, True]


def test_a_failing_extension_warns_and_mlipx_still_imports(tmp_path):
    broken = GENERIC_ASE.replace("@dataclasses.dataclass\n", "")  # not a dataclass: fields fail
    found = run(stand_in_mlipx(tmp_path, broken), """
        import json
        from mlipx.nodes.generic_ase import GenericASECalculator
        print(json.dumps(GenericASECalculator.__name__))
    """)
    assert found["out"] == "GenericASECalculator"
    assert "mlipx-serve could not extend mlipx.nodes.generic_ase" in found["err"]
    assert "MLIPX_SERVE_HOOK=0" in found["err"]


def test_without_mlipx_the_hook_loads_nothing_else():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, sys
        print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in
                                ("mlipx", "mlipx_serve", "mdp", "zmq", "ase", "numpy"))))
    """)], capture_output=True, text=True, timeout=50, env=_base_env())
    assert json.loads(done.stdout) == ["mlipx_serve", "mlipx_serve.environment",
                                       "mlipx_serve.mlipx_glue", "mlipx_serve.mlipx_glue.hook",
                                       "mlipx_serve.mlipx_hook"]


PTH = PROJECT / "mlipx_serve_hook.pth"


def process_pth(directory: Path) -> subprocess.CompletedProcess:
    """Python's start-up handling of our .pth file in ``directory`` (no other site dirs)."""
    (directory / PTH.name).write_text(PTH.read_text())
    code = f"import site, sys; site.addsitedir({str(directory)!r}); " \
           "print(any(type(f).__name__ == 'MlipxFinder' for f in sys.meta_path))"
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=50, cwd=directory, env=_base_env())


def test_the_hook_line_is_silent_where_mlipx_serve_is_gone(tmp_path):
    done = process_pth(tmp_path)
    assert (done.stdout.strip(), done.stderr) == ("False", "")


def test_the_hook_line_installs_the_finder_and_reports_a_broken_hook(tmp_path):
    hook = PROJECT / "mlipx_serve"
    (tmp_path / "mlipx_serve").symlink_to(hook)
    assert process_pth(tmp_path).stdout.strip() == "True"
    broken = tmp_path / "broken"
    (broken / "mlipx_serve").mkdir(parents=True)
    (broken / "mlipx_serve" / "__init__.py").write_text("")
    (broken / "mlipx_serve" / "mlipx_hook.py").write_text("import no_such_module_here\n")
    done = process_pth(broken)
    assert "no_such_module_here" in done.stderr


def test_the_hook_knows_the_serve_commands_that_the_command_line_has():
    """(The hook, which every Python start-up imports, cannot import the command line.)"""
    from mlipx_serve.cli.main import SERVE_COMMANDS
    from mlipx_serve.mlipx_glue.hook import SERVE_COMMANDS as KNOWN

    assert set(KNOWN) == set(SERVE_COMMANDS)
