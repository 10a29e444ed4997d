"""The ``mdp`` command: run a broker, call a service, show status, run an echo worker."""

from __future__ import annotations

import json
import logging
import sys

import typer
from rich.console import Console
from rich.table import Table

from .broker import Broker
from .client import Client
from .core import BrokerConfig
from .errors import MDPError
from .protocol import Dialect
from .worker import Worker

app = typer.Typer(help="A Majordomo (MDP/0.2, MDP/0.1, MMI) service bus.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DIALECTS = {"0.2": Dialect.V02, "0.1": Dialect.V01, "majortomo": Dialect.MAJORTOMO}


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise typer.BadParameter(f"choose one of {', '.join(DIALECTS)}") from None


@app.command()
def broker(
    bind: list[str] = typer.Option([DEFAULT_ENDPOINT], "--bind", "-b",
                                   help="Endpoint for clients and workers; repeat for more."),
    worker_bind: list[str] = typer.Option([], "--worker-bind",
                                          help="Separate endpoint(s) for workers only."),
    heartbeat: float = typer.Option(2.5, help="Seconds between heartbeats to workers."),
    liveness: int = typer.Option(3, help="Heartbeats a worker may miss before it is dropped."),
    expiry: float = typer.Option(300.0, help="Seconds a request may wait for a worker "
                                 "(0: forever)."),
    queue_limit: int = typer.Option(10_000, help="Requests a service may queue (0: no limit)."),
    max_attempts: int = typer.Option(3, help="Workers a request may be tried on before it "
                                     "is given up."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every connection."),
) -> None:
    """Run a broker until Ctrl-C or SIGTERM."""
    _logging(verbose)
    config = BrokerConfig(heartbeat_interval=heartbeat, heartbeat_liveness=liveness,
                          request_expiry=expiry or None, queue_limit=queue_limit or None,
                          max_attempts=max_attempts)
    try:
        server = Broker(bind, worker_bind, config)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    err_console.print(f"mdp broker on {', '.join(bind + worker_bind)} (Ctrl-C stops it)")
    try:
        server.run()
    except OSError as error:
        err_console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None


@app.command()
def call(
    service: str = typer.Argument(..., help="Service name, e.g. echo or mmi.service."),
    frames: list[str] = typer.Argument(None, help="Request body frames (UTF-8 text)."),
    broker: str = typer.Option(DEFAULT_ENDPOINT, "--broker", "-b", help="Broker endpoint."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for the reply."),
    retries: int = typer.Option(0, help="Times to resend after a timeout."),
    dialect: str = typer.Option("0.2", help="Wire dialect: 0.2, 0.1 or majortomo."),
) -> None:
    """Send one request and print the reply, one frame per line."""
    with Client(broker, timeout=timeout, retries=retries, dialect=_dialect(dialect)) as client:
        try:
            for part in client.stream(service, *(frames or [])):
                for frame in part:
                    print(bytes(frame).decode("utf-8", "backslashreplace"))
        except MDPError as error:
            err_console.print(f"[red]{type(error).__name__}:[/] {error}")
            raise typer.Exit(1) from None


@app.command()
def status(
    broker: str = typer.Option(DEFAULT_ENDPOINT, "--broker", "-b", help="Broker endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    timeout: float = typer.Option(3.0, help="Seconds to wait for the broker."),
) -> None:
    """Show services, workers and queues of a running broker (exit 1 if none answers)."""
    try:
        with Client(broker, timeout=timeout, retries=0) as client:
            data = json.loads(bytes(client.request("mmi.status")[0]))
    except MDPError as error:
        err_console.print(f"[red]no broker answered at {broker}:[/] {error}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(status_table(data, broker))


def status_table(data: dict, endpoint: str) -> Table:
    table = Table(title=f"mdp broker {data['version']} at {endpoint}, "
                        f"up {data['uptime']:.0f} s")
    for column in ("service", "workers", "idle", "busy", "queued", "served", "failed",
                   "expired"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, service in data["services"].items():
        table.add_row(name, *(str(service[key]) for key in
                              ("workers", "idle", "busy", "queued", "served", "failed",
                               "expired")))
    if not data["services"]:
        table.caption = "no services yet: start a worker, e.g. `mdp echo`"
    return table


@app.command()
def echo(
    broker: str = typer.Option(DEFAULT_ENDPOINT, "--broker", "-b", help="Broker endpoint."),
    service: str = typer.Option("echo", help="Service name to register."),
    idle_timeout: float = typer.Option(0.0, help="Leave after this many idle seconds "
                                       "(0: never)."),
    heartbeat: float = typer.Option(2.5, help="Seconds between heartbeats."),
    dialect: str = typer.Option("0.2", help="Wire dialect: 0.2, 0.1 or majortomo."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """A worker that sends every request back unchanged (for smoke tests)."""
    _logging(verbose)
    worker = Worker(broker, service, lambda frames: frames, heartbeat_interval=heartbeat,
                    idle_timeout=idle_timeout or None, dialect=_dialect(dialect))
    err_console.print(f"echo worker for '{service}' at {broker}")
    worker.run()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
