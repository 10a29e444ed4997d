"""A worker whose model's packages are missing runs itself under uv, with the model's extras."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

import pytest

from mlipx_serve.errors import ServeError
from mlipx_serve.worker import uv as serve
from mlipx_serve.worker.uv import missing_modules, project_defines, reexec_under_uv, uv_command


@dataclass
class Model:
    module: str
    extra: list[str] = field(default_factory=list)


def test_missing_modules_names_the_top_level_package():
    assert missing_modules(Model("ase.calculators.emt")) == []
    assert missing_modules(Model("no_such_pkg_xyz.calculators")) == ["no_such_pkg_xyz"]
    assert missing_modules(object()) == []


def test_uv_runs_the_project_extras_inside_a_project_that_defines_them(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/uv")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[project.optional-dependencies]\nmace = ["mace-torch"]\n')
    (tmp_path / "sub").mkdir()
    command = uv_command(["mace"], ["serve", "mace-mpa-0"], cwd=tmp_path / "sub")
    assert command == ["/opt/uv", "run", "--extra", "mace", "mlipx", "serve", "mace-mpa-0",
                       "--no-uv"]


def test_uv_names_the_requirements_outside_a_project(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/uv")
    monkeypatch.setattr(serve, "EXTRAS", {"chgnet": ["chgnet>=0.4.0"]})
    command = uv_command(["chgnet"], ["serve", "chgnet"], cwd=tmp_path)
    assert command == ["/opt/uv", "run", "--no-project", "--python", sys.executable,
                       "--with", "chgnet>=0.4.0", "--", "python", "-m", "mlipx_serve.cli",
                       "serve", "chgnet", "--no-uv"]


def test_a_project_without_the_extra_is_not_used(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert not project_defines(["mace"], tmp_path)
    (tmp_path / "pyproject.toml").write_text("not toml [")
    assert not project_defines(["mace"], tmp_path)


def test_without_uv_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(serve, "find_uv", lambda: None)
    monkeypatch.setattr(serve, "EXTRAS", {"mace": ["mace-torch>=0.3.12"]})
    with pytest.raises(ServeError, match=r"pip install 'mace-torch>=0.3.12'"):
        uv_command(["mace"], ["serve", "mace-mpa-0"])


@pytest.mark.parametrize("model", [
    Model("ase.calculators.emt", ["mace"]),  # importable: no uv needed
    Model("no_such_pkg_xyz"),  # no extra to install it with
])
def test_no_reexec_when_it_would_not_help(model, monkeypatch):
    monkeypatch.setattr(serve.os, "execv", lambda *args: pytest.fail("must not exec"))
    reexec_under_uv(model, ["serve", "x"])


def test_reexec_replaces_the_process_with_uv_and_tells_it_not_to_again(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/uv")
    calls = []
    monkeypatch.setattr(serve.os, "execv", lambda path, argv: calls.append((path, argv)))
    reexec_under_uv(Model("no_such_pkg_xyz", ["no-such-extra"]), ["serve", "x", "--timeout", "5"])
    [(path, argv)] = calls
    assert path == "/opt/uv" and argv[:2] == ["/opt/uv", "run"]
    assert argv[-5:] == ["serve", "x", "--timeout", "5", "--no-uv"]


MODELS_NEEDING_A_PACKAGE = '''
from dataclasses import dataclass, field


@dataclass
class NeedsTomliW:
    """Imports a small pure-Python package this environment lacks, then acts as EMT."""
    module: str = "tomli_w"
    extra: list = field(default_factory=lambda: ["tomli-w"])

    def get_calculator(self, **kwargs):
        import tomli_w  # noqa: F401  (only present under uv)
        from ase.calculators.emt import EMT
        return EMT()


ALL_MODELS = {"needs-tomli-w": NeedsTomliW()}
'''


@pytest.mark.timeout(300)
@pytest.mark.skipif(serve.find_uv() is None, reason="uv is not installed")
@pytest.mark.skipif(serve.importlib.util.find_spec("tomli_w") is not None,
                    reason="tomli_w is installed here, so nothing would need uv")
def test_a_worker_runs_itself_under_uv_to_get_its_extra(tmp_path, serve_system):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from mlipx_serve import RemoteCalculator

    models = tmp_path / "models.py"
    models.write_text(MODELS_NEEDING_A_PACKAGE)
    broker = serve_system.broker()
    serve_system.worker("needs-tomli-w", broker, "--models", str(models))
    atoms = bulk("Cu", cubic=True)
    # The model imports tomli_w, which only uv's environment has: an energy proves the
    # worker re-ran itself under uv with the model's extra.
    atoms.calc = RemoteCalculator("needs-tomli-w", broker, timeout=240)
    assert atoms.get_potential_energy() == pytest.approx(EMT().get_potential_energy(atoms))

