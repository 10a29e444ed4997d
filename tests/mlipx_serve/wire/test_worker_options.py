"""The worker's command line, spelled once: what ``WorkerOptions.command`` writes, ``mlipx
serve`` reads back as the same options, and the defaults are the command's own."""

from __future__ import annotations

import sys

import pytest
import typer

from mlipx_serve.cli.main import app
from mlipx_serve.cli.worker import worker_options
from mlipx_serve.wire.worker_options import DEFAULTS, WorkerOptions

pytestmark = pytest.mark.timeout(10)


def parsed(arguments: list[str]) -> WorkerOptions:
    """``mlipx serve ARGUMENTS`` as the command would see them, without running it."""
    serve = typer.main.get_command(app).commands["serve"]
    with serve.make_context("serve", list(arguments)) as context:
        return worker_options(context.params)


def test_every_option_goes_through_the_command_line_and_back(tmp_path):
    factory = tmp_path / "f.pkl"
    factory.write_bytes(b"")
    keys = tmp_path / "broker.key"
    keys.write_text("")
    options = WorkerOptions(
        "my-lj@3f9a2c1e", broker="ipc:///tmp/b-workers.ipc", models_files=("/a.py", "/b.py"),
        definition='{"identity": {}}', factory=str(factory), timeout=0.0, heartbeat=0.3,
        batch_size=16, batch_wait=0.05, prefetch=1, exit_with=4711, orphan_timeout=30.0,
        curve_server_key=str(keys), curve_secret_key=str(keys), no_uv=True, verbose=True)
    command = options.command()
    assert command[:4] == [sys.executable, "-m", "mlipx_serve.cli", "serve"]
    assert parsed(command[4:]) == options


def test_defaults_are_the_commands_and_are_left_out():
    assert WorkerOptions("emt").arguments() == ["emt"]
    assert parsed(["emt"]) == WorkerOptions("emt")
    assert parsed(["emt"]).timeout is None  # not said: the model's settings, else 300 s
    assert parsed(["emt"]).heartbeat == DEFAULTS.heartbeat
    assert WorkerOptions("emt", batch_size=4).arguments() == ["emt", "--batch-size", "4"]


def test_options_travel_as_json():
    options = WorkerOptions("emt", connect="/c.json", models_files=("/m.py",), prefetch=2)
    assert WorkerOptions.from_json(options.to_json()) == options
    assert WorkerOptions.from_json({**options.to_json(), "from_a_newer_version": 1}) == options
