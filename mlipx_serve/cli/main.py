"""The ``mlipx`` command: serve-broker, serve, serve-status and serve-submit; anything else
goes to mlipx's own command line, which gets these four too when it is installed."""

from __future__ import annotations

import importlib.util
import sys
import traceback

import typer
from rich.markup import escape

from mlipx_serve import environment
from mlipx_serve.cli.broker import serve_broker
from mlipx_serve.cli.console import err
from mlipx_serve.cli.status import serve_status
from mlipx_serve.cli.submit import serve_submit
from mlipx_serve.cli.worker import serve

app = typer.Typer(
    help="Serve machine-learned interatomic potentials to ASE over a Majordomo bus.",
    epilog=f"Environment: {environment.BROKER} (the broker's endpoint), "
           f"{environment.USE_SERVE} (true: mlipx's models prefer served ones), "
           f"{environment.TIMEOUT} (seconds a served calculation may wait for its reply; "
           f"600), {environment.MODELS} (models.py files), {environment.CURVE_SERVER_KEY} and "
           f"{environment.CURVE_SECRET_KEY} (CURVE key files), {environment.HOOK} (0: leave "
           f"mlipx as it is).",
    add_completion=False, no_args_is_help=True)

SERVE_COMMANDS = {"serve-broker": serve_broker, "serve": serve, "serve-status": serve_status,
                  "serve-submit": serve_submit}


def add_commands(target: typer.Typer) -> None:
    """Register the serve commands on ``target``: this app, or mlipx's own (once)."""
    present = {info.name for info in target.registered_commands}
    for name, command in SERVE_COMMANDS.items():
        if name not in present:
            target.command(name)(command)


add_commands(app)


def main() -> None:
    """The ``mlipx`` script: one command line, whichever package installed it last.

    The serve commands run at once (importing mlipx's command line takes seconds);
    everything else goes to mlipx's own command line, which has them too, when mlipx is
    installed. When mlipx is installed but its command line fails to load, say why.
    """
    argv = sys.argv[1:]
    if argv and argv[0] in SERVE_COMMANDS:
        app()
        return
    mlipx_app, failure = _mlipx_app()
    if mlipx_app is not None:
        mlipx_app()
        return
    asked_for_other = bool(argv) and not argv[0].startswith("-")
    if failure is not None:
        err.print(failure)
    elif asked_for_other:
        err.print(f"[bold red]error:[/] '{escape(argv[0])}' is not one of "
                  f"{', '.join(SERVE_COMMANDS)}; the other mlipx commands need mlipx: "
                  f"pip install mlipx")
    if asked_for_other:
        sys.exit(2)
    app()


def _mlipx_app() -> tuple[typer.Typer | None, str | None]:
    """mlipx's command line with ours added, or None and why not (None: not installed)."""
    if importlib.util.find_spec("mlipx") is None:
        return None, None
    try:
        from mlipx.cli.main import app as mlipx_app
    except Exception as error:  # installed, but broken: show the real cause
        where = traceback.extract_tb(error.__traceback__)[-1]
        return None, (
            f"[bold red]mlipx is installed, but its command line failed to load:[/] "
            f"{type(error).__name__}: {escape(str(error))}\n  (in {escape(where.filename)}, "
            f"line {where.lineno}; "
            f"`python -c 'import mlipx.cli.main'` shows the whole traceback)\n"
            f"Only the serve commands work until that is fixed.")
    add_commands(mlipx_app)
    return mlipx_app, None
