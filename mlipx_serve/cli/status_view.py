"""``mlipx serve-status`` as rich tables: the broker, its models, and what to do next."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mlipx_serve.client.broker_status import (
    available_models,
    how_to_serve,
    serving,
    worker_processes,
)
from mlipx_serve.client.routing import fingerprints
from mlipx_serve.wire.definition import short_text
from mlipx_serve.wire.endpoints import start_broker
from mlipx_serve.wire.serving import ServingSettings
from mlipx_serve.wire.status import ModelOffer, ServingStatus

TEXT_COLUMNS = ("model", "serving", "by", "definition")


def render(status: dict) -> Group:
    if not status["running"]:
        return Group(
            Text(f"No model broker answers at {status['broker']}.", style="bold red"),
            Text(f"Start one with:  {start_broker(status['broker'])}\n"
                 "or serve a model by hand beside it:  mlipx serve emt\n"
                 "A broker that uses CURVE stays silent to missing or wrong keys: give "
                 "--curve-server-key (and --curve-secret-key) or set "
                 "$MLIPX_SERVE_CURVE_SERVER_KEY (and ..._SECRET_KEY)."))
    parts = [broker_table(status), models_table(status)]
    if status["status"]["workers"]:
        parts.append(workers_table(status))
    if any(service.get("clients") for service in status["status"]["services"].values()):
        parts.append(clients_table(status))
    if serving(status).jobs:
        parts.append(jobs_table(status))
    stuck = stuck_models(status)
    parts.extend(Text(stuck_advice(status, name, queued)) for name, queued in stuck.items())
    if not available_models(status) and not stuck:
        parts.append(Text("No models yet. Start a worker with `mlipx serve emt`, or restart "
                          "the broker with --autostart to start workers on demand."))
    return Group(*parts)


def stuck_models(status: dict) -> dict[str, int]:
    """Model -> requests queued for it, for the models whose requests wait with no worker
    and none to come: none serves them and the broker cannot start one."""
    offered = available_models(status)
    return {name: service["queued"] for name, service in status["status"]["services"].items()
            if service["queued"] and not service["workers"] and name not in offered}


def stuck_advice(status: dict, name: str, queued: int) -> str:
    """What to do about requests that wait for a model nobody serves."""
    return (f"{queued} request(s) for '{name}' wait, and no worker serves it: "
            f"{how_to_serve(status, name)}; or restart the broker with --autostart.")


def broker_table(status: dict) -> Table:
    data, autostart = status["status"], serving(status)
    table = Table(title="Broker", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("running", "yes")
    table.add_row("path", _text(status["broker"]))
    table.add_row("autostart", _autostart(autostart))
    if autostart.connection_file:
        table.add_row("connection file", _text(autostart.connection_file))
    table.add_row("uptime", _duration(data["uptime"]))
    table.add_row("version", data["version"])
    processes, connections = len(worker_processes(data["workers"])), len(data["workers"])
    table.add_row("workers", str(processes) if processes == connections else
                  f"{processes} ({connections} connections)")
    if autostart.autostart:
        table.add_row("worker limit", _capacity(autostart))
    return table


def _capacity(autostart: ServingStatus) -> str:
    """``3 running of at most 4; retired 2 idle (lj@3f9a2c1e 2); waiting for room: emt``"""
    limit = "no limit" if autostart.worker_limit is None else \
        f"at most {autostart.worker_limit}"
    text = f"{autostart.running_workers} running of {limit}"
    if autostart.retired:
        counts = " ".join(f"{model} {count}" for model, count in autostart.retired.items())
        text += f"; retired {sum(autostart.retired.values())} idle ({counts})"
    if autostart.waiting_for_room:
        text += f"; waiting for room: {', '.join(autostart.waiting_for_room)}"
    return text


def models_table(status: dict) -> Table:
    """One row per model, with its definition in short and who defined it: the broker
    (built in, or its models files), a client (served as it defined it), or a worker
    started by hand (protocol/model-definition.md). Counts are structures (a chunk counts
    its structures; requests beside them where they differ), and the last minute's rate
    and median and p95 of the time a request waited and took."""
    table = Table(title="Models (structures; requests in brackets)")
    columns = ("model", "idle", "busy", "queued", "served", "failed", "per s", "wait",
               "compute", "autostart", "serving", "by", "definition")
    for column in columns:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    starting = serving(status).starting
    models = available_models(status)
    running_first = sorted(models, key=lambda name: (models[name]["workers"] == 0, name))
    for name in running_first:
        info = models[name]
        services = status["status"]["services"].get(name, {})
        note = f"starting ({starting[name]:.0f} s)" if name in starting else \
            ("yes" if info["autostart"] else "no")
        table.add_row(Text(name), str(info["idle"]), str(info["busy"]),
                      *_counts(services), *_recent(services.get("recent")), note,
                      _settings(serving(status).models.get(name)), *_defined(status, name))
    for name in stuck_models(status):
        services = status["status"]["services"][name]
        table.add_row(Text(name), "0", "0", *_counts(services), *_recent(services.get("recent")),
                      Text("no: start a worker", style="bold red"), "", "", "")
    return table


def _counts(service: dict) -> list[str]:
    """Queued, served and failed, in structures, with requests where they differ."""
    units = service.get("units", {})
    return [_count(units.get(kind, service.get(kind, 0)), service.get(kind, 0))
            for kind in ("queued", "served", "failed")]


def _count(structures: int, requests: int) -> str:
    return f"{structures:,}" if structures == requests else f"{structures:,} ({requests:,})"


def _recent(recent: dict | None) -> list[str]:
    """The last minute's structures per second, and median / p95 of waits and compute."""
    if not recent:
        return ["", "", ""]
    return [f"{recent['units_per_second']:.1f}",
            _pair(recent["wait_median"], recent["wait_p95"]),
            _pair(recent["work_median"], recent["work_p95"])]


def _pair(median: float | None, p95: float | None) -> str:
    return "-" if median is None else f"{_seconds(median)} / {_seconds(p95)}"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _settings(offer: ModelOffer | None) -> str:
    """How autostart serves a model, in short: ``batch 16 (0.01 s), 2 workers, GPU 0,1``."""
    if offer is None:
        return ""
    settings = ServingSettings.of(offer.serving)
    parts = []
    if (settings.batch_size or 1) > 1:
        parts.append(f"batch {settings.batch_size} ({settings.batch_wait:g} s)")
    if settings.prefetch:
        parts.append(f"prefetch {settings.prefetch}")
    parts.append(f"{offer.max_workers} worker{'s' if offer.max_workers > 1 else ''}")
    if offer.devices:
        parts.append(f"GPU {','.join(offer.devices)}")
    return ", ".join(parts)


def _defined(status: dict, name: str) -> tuple[str, Text]:
    """(who defined model ``name``, its definition in short); a model whose workers do not
    all serve one definition is marked, as requests naming a definition fail on some."""
    offer = serving(status).models.get(name)
    identity, by = (offer.definition, offer.defined_by) if offer else (None, "broker")
    for worker in status["status"]["workers"]:
        if identity is None and worker["service"] == name:
            identity, by = (worker.get("metadata") or {}).get("definition"), "worker"
    text = Text(short_text(identity) if identity else "-")
    kinds = len(fingerprints(status).get(name, ()))
    if kinds > 1:
        text.append(f"  (mixed: workers of {kinds} definitions)", style="bold red")
    return by, text


def workers_table(status: dict) -> Table:
    """One row per worker process (a batching or prefetching worker holds several
    connections), with what the worker said of itself in READY."""
    table = Table(title="Workers")
    numbers = ("served", "failed", "up")
    for column in ("worker", "model", "state", *numbers, "host", "device", "job"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for model, name, connections in worker_processes(status["status"]["workers"]):
        about = connections[0].get("metadata") or {}
        table.add_row(_text(name), _text(model), _state(connections),
                      str(sum(c["served"] for c in connections)),
                      str(sum(c.get("failed", 0) for c in connections)),
                      _duration(_up(connections, about, status.get("at"))),
                      _text(about.get("host")), _text(about.get("device")),
                      _text(about.get("slurm_job")))
    return table


def clients_table(status: dict) -> Table:
    """Who is waiting: per model, the scripts with requests queued or in a worker's hands
    (protocol/mdp.md 6.1), which the broker serves in turn."""
    table = Table(title="Clients (served in turn)")
    numbers = ("queued", "in flight", "served", "oldest waits", "since")
    for column in ("model", "host", "pid", *numbers):
        table.add_column(column, justify="right" if column in numbers + ("pid",) else "left")
    for model, service in sorted(status["status"]["services"].items()):
        for client in service.get("clients", []):
            table.add_row(_text(model), _text(client["host"] or client["client"]),
                          _text(client["pid"]), str(client["queued"]),
                          str(client["in_flight"]), str(client["served"]),
                          _wait(client["waiting"]) if client["queued"] else "-",
                          _duration(client["since"]))
        hidden = service.get("clients_active", 0) - len(service.get("clients", []))
        if hidden > 0:
            table.add_row(_text(model), f"... {hidden} more", "", "", "", "", "", "")
    return table


def _wait(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else _duration(seconds)


def _up(connections: list[dict], about: dict, taken_at: float | None) -> float:
    """How long the worker process has run: from the start it reports (``started``, Unix
    time) to when the status was taken; else, or if clocks disagree, since it registered
    (``since``, which starts again whenever a connection re-registers, after a broker
    restart say, and leaves out the time the model took to load)."""
    registered = max(c["since"] for c in connections)
    started = about.get("started")
    if isinstance(started, (int, float)) and taken_at is not None:
        return max(taken_at - started, registered)
    return registered


def _state(connections: list[dict]) -> str:
    if len(connections) == 1:
        return connections[0]["state"]
    busy = sum(c["state"] == "busy" for c in connections)
    return f"{busy} of {len(connections)} busy" if busy else f"idle ({len(connections)})"


def jobs_table(status: dict) -> Table:
    """The broker's SLURM jobs that have not ended: waiting in the queue, or running."""
    table = Table(title="SLURM jobs")
    for column in ("job", "model", "state", "reason or node", "since", "by"):
        table.add_column(column, justify="right" if column == "since" else "left")
    for job in serving(status).jobs:
        where = job.node if job.state == "RUNNING" else job.reason
        table.add_row(_text(job.job), _text(job.model), _text(job.state),
                      _text("" if where == "None" else where), _duration(job.age),
                      _text(job.by))
    return table


def _autostart(autostart: ServingStatus) -> str:
    if not autostart.autostart:
        return "off"
    if autostart.launcher != "slurm":
        return "on"
    options = autostart.slurm or {}
    partition = f", partition {options['partition']}" if options.get("partition") else ""
    gpus = f", {options['gpus']} GPU(s) per worker" if options.get("gpus") else ""
    return f"on, as SLURM jobs{partition}{gpus}"


def _text(value: object) -> Text:
    """A cell as it is: rich would read ``[...]`` in a plain string as markup."""
    return Text("" if value is None else str(value))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
