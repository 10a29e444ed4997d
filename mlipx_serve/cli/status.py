"""``mlipx serve-status``: the broker's state as tables (``status_view``), as JSON, or
redrawn in place."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from mlipx_serve.cli import options
from mlipx_serve.cli.console import console

WIDE = 400  # columns a table may take off a terminal


def serve_status(
    broker: str = options.BROKER,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh the tables in place "
                               "until Ctrl-C."),
    interval: float = typer.Option(1.5, "--interval", min=0.1, help="Seconds between "
                                   "refreshes with --watch."),
    curve_server_key: Path | None = options.CURVE_SERVER_KEY,
    curve_secret_key: Path | None = options.CURVE_SECRET_KEY,
) -> None:
    """Show the broker, its models, workers, SLURM jobs and queues (exit 1 if no broker
    answers)."""
    from mlipx_serve.cli.status_view import render
    from mlipx_serve.client.broker_status import get_broker_status

    curve = options.checked_curve(curve_server_key, curve_secret_key)
    status = get_broker_status(broker, **curve)
    if watch:
        _watch(lambda: render(get_broker_status(broker, **curve)), render(status), interval)
        return
    if as_json:
        print(json.dumps(status, indent=2))
    elif console.is_terminal:
        console.print(render(status))
    else:  # piped, or into a log: every cell whole, not squeezed into 80 columns
        Console(width=WIDE).print(render(status))
    if not status["running"]:
        raise typer.Exit(1)


def _watch(rendered: Callable, first, interval: float) -> None:
    """The tables, redrawn every ``interval`` seconds until Ctrl-C (then exit 0)."""
    from rich.live import Live

    try:
        with Live(first, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(rendered(), refresh=True)
    except KeyboardInterrupt:
        pass
