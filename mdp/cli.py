"""The ``mdp`` command: run a broker, call a service, show status, run an echo worker."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .broker import Broker
from .client import Client, ask
from .core import BrokerConfig
from .errors import MDPError
from .protocol import Dialect
from .security import CurveError, create_key_pair
from .worker import Worker

app = typer.Typer(help="A Majordomo (MDP/0.2, MDP/0.1, MMI) service bus.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DIALECTS = {"0.2": Dialect.V02, "0.1": Dialect.V01, "majortomo": Dialect.MAJORTOMO}
T = TypeVar("T")

SERVER_KEY = typer.Option(None, "--curve-server-key", exists=True, dir_okay=False,
                          help="The broker's public key file (NAME.key): use CURVE.")
SECRET_KEY = typer.Option(None, "--curve-secret-key", exists=True, dir_okay=False,
                          help="This peer's key pair (NAME.key_secret); default: an "
                          "ephemeral pair, which only a broker admitting any key accepts.")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise typer.BadParameter(f"choose one of {', '.join(DIALECTS)}") from None


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise typer.BadParameter(f"an octal mode such as 600 or 660, not {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise typer.BadParameter(f"a mode is 000 to 777, not {text}")
    return mode


def _or_exit(make: Callable[[], T]) -> T:
    """Build a broker, client or worker (or ask once); unusable options or key files end
    the command."""
    try:
        return make()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    except CurveError as error:
        err_console.print(f"[red]CURVE error:[/] {escape(str(error))}")
        raise typer.Exit(2) from None


@app.command()
def keys(
    directory: Path = typer.Argument(..., help="Directory for the key files (made if missing)."),
    name: str = typer.Argument(..., help="Key name, e.g. broker, or a client's or host's name."),
) -> None:
    """Write a CURVE key pair: NAME.key (public, to share) and NAME.key_secret (private)."""
    public, secret = _or_exit(lambda: create_key_pair(directory, name))
    print(public)
    print(secret)
    err_console.print(escape(f"give {public.name} to peers (a broker's: --curve-server-key; "
                             f"a client's: copy into the broker's --curve-clients directory); "
                             f"keep {secret.name} private"))


@app.command()
def broker(
    bind: list[str] = typer.Option([DEFAULT_ENDPOINT], "--bind", "-b",
                                   help="Endpoint for clients and workers; repeat for more."),
    worker_bind: list[str] = typer.Option([], "--worker-bind",
                                          help="Separate endpoint(s) for workers only."),
    heartbeat: float = typer.Option(2.5, help="Seconds between heartbeats to workers."),
    liveness: int = typer.Option(3, help="Heartbeats an idle worker may miss before it is "
                                 "dropped."),
    busy_timeout: float = typer.Option(900.0, help="Seconds a busy worker may stay silent "
                                       "before it is dropped (0: forever); one whose "
                                       "connection closes is dropped at once."),
    expiry: float = typer.Option(300.0, help="Seconds a request may wait for a worker "
                                 "(0: forever)."),
    queue_limit: int = typer.Option(10_000, help="Requests a service may queue (0: no limit)."),
    max_attempts: int = typer.Option(3, help="Workers a request may be tried on before it "
                                     "is given up."),
    ipc_mode: str = typer.Option("600", help="Permissions (octal) of the socket file of each "
                                 "ipc endpoint; e.g. 660 lets the group connect."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every connection."),
    curve_secret_key: Path | None = typer.Option(
        None, "--curve-secret-key", exists=True, dir_okay=False,
        help="The broker's key pair (NAME.key_secret): CURVE on every endpoint."),
    curve_clients: Path | None = typer.Option(
        None, "--curve-clients", exists=True, file_okay=False,
        help="Directory of admitted public keys (*.key); without it any key is admitted."),
    curve_workers_only: bool = typer.Option(
        False, "--curve-workers-only", help="CURVE on the --worker-bind endpoints only; "
        "clients on --bind connect in the clear (e.g. a private ipc socket)."),
    metrics: str | None = typer.Option(
        None, "--metrics", metavar="[HOST:]PORT", help="Serve Prometheus metrics over HTTP "
        "at HOST:PORT (a port alone: 127.0.0.1); off by default."),
) -> None:
    """Run a broker until Ctrl-C or SIGTERM."""
    _logging(verbose)
    config = BrokerConfig(heartbeat_interval=heartbeat, heartbeat_liveness=liveness,
                          busy_timeout=busy_timeout or None, request_expiry=expiry or None,
                          queue_limit=queue_limit or None, max_attempts=max_attempts)
    server = _or_exit(lambda: Broker(bind, worker_bind, config, curve_secret_key=curve_secret_key,
                                     curve_clients=curve_clients,
                                     curve_workers_only=curve_workers_only,
                                     ipc_mode=_octal_mode(ipc_mode)))
    if metrics is not None:
        _serve_metrics(server, metrics)
    err_console.print(escape(f"mdp broker on {', '.join(bind + worker_bind)} (Ctrl-C stops it)"))
    if curve_secret_key is not None:
        where = " on the worker endpoints" if curve_workers_only else ""
        err_console.print(escape(f"CURVE{where}: admitting the keys in {curve_clients}"
                                 if curve_clients else
                                 f"CURVE{where}: encrypted, admitting any client key"))
    try:
        server.run()
    except (OSError, CurveError) as error:
        err_console.print(f"[red]error:[/] {escape(str(error))}")
        raise typer.Exit(1) from None


def _serve_metrics(server: Broker, address: str) -> None:
    from .metrics import metrics_address, serve_metrics

    host, port = _or_exit(lambda: metrics_address(address))
    try:
        serve_metrics(server, address)
    except OSError as error:
        err_console.print(f"[red]error:[/] --metrics {escape(address)}: {escape(str(error))}")
        raise typer.Exit(1) from None
    err_console.print(escape(f"Prometheus metrics at http://{host}:{port}/metrics"))


@app.command()
def call(
    service: str = typer.Argument(..., help="Service name, e.g. echo or mmi.service."),
    frames: list[str] = typer.Argument(None, help="Request body frames (UTF-8 text)."),
    broker: str = typer.Option(DEFAULT_ENDPOINT, "--broker", "-b", help="Broker endpoint."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for the reply."),
    retries: int = typer.Option(0, help="Times to resend after a timeout."),
    dialect: str = typer.Option("0.2", help="Wire dialect: 0.2, 0.1 or majortomo."),
    curve_server_key: Path | None = SERVER_KEY,
    curve_secret_key: Path | None = SECRET_KEY,
) -> None:
    """Send one request and print the reply, one frame per line."""
    client = _or_exit(lambda: Client(broker, timeout=timeout, retries=retries,
                                     dialect=_dialect(dialect), curve_server_key=curve_server_key,
                                     curve_secret_key=curve_secret_key))
    with client:
        try:
            for part in client.stream(service, *(frames or [])):
                for frame in part:
                    print(bytes(frame).decode("utf-8", "backslashreplace"))
        except MDPError as error:
            err_console.print(f"[red]{type(error).__name__}:[/] {escape(str(error))}")
            raise typer.Exit(1) from None


@app.command()
def status(
    broker: str = typer.Option(DEFAULT_ENDPOINT, "--broker", "-b", help="Broker endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    timeout: float = typer.Option(3.0, help="Seconds to wait for the broker."),
    curve_server_key: Path | None = SERVER_KEY,
    curve_secret_key: Path | None = SECRET_KEY,
) -> None:
    """Show services, workers and queues of a running broker (exit 1 if none answers)."""
    try:
        reply = _or_exit(lambda: ask(broker, "mmi.status", timeout=timeout,
                                     curve_server_key=curve_server_key,
                                     curve_secret_key=curve_secret_key))
    except MDPError as error:
        err_console.print(f"[red]no broker answered at {escape(broker)}:[/] "
                          f"{escape(str(error))}")
        raise typer.Exit(1) from None
    data = json.loads(reply[0])
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(status_table(data, broker))


def status_table(data: dict, endpoint: str) -> Table:
    table = Table(title=escape(f"mdp broker {data['version']} at {endpoint}, "
                               f"up {data['uptime']:.0f} s"))
    for column in ("service", "workers", "idle", "busy", "queued", "served", "failed",
                   "expired"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, service in data["services"].items():
        table.add_row(escape(name), *(str(service[key]) for key in
                                      ("workers", "idle", "busy", "queued", "served",
                                       "failed", "expired")))
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
    curve_server_key: Path | None = SERVER_KEY,
    curve_secret_key: Path | None = SECRET_KEY,
) -> None:
    """A worker that sends every request back unchanged (for smoke tests)."""
    _logging(verbose)
    worker = _or_exit(lambda: Worker(
        broker, service, lambda frames: frames, heartbeat_interval=heartbeat,
        idle_timeout=idle_timeout or None, dialect=_dialect(dialect),
        curve_server_key=curve_server_key, curve_secret_key=curve_secret_key))
    err_console.print(escape(f"echo worker for '{service}' at {broker}"))
    worker.run()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
