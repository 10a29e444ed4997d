"""``mlipx serve-status`` as rich tables: the broker, its models, and what to do next."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .broker_status import available_models, worker_processes


def render(status: dict) -> Group:
    if not status["running"]:
        return Group(
            Text(f"No model broker answers at {status['broker']}.", style="bold red"),
            Text("Start one with:  mlipx serve-broker --autostart\n"
                 "or serve a model by hand beside it:  mlipx serve emt\n"
                 "A broker that uses CURVE stays silent to missing or wrong keys: give "
                 "--curve-server-key (and --curve-secret-key) or set "
                 "$MLIPX_SERVE_CURVE_SERVER_KEY (and ..._SECRET_KEY)."))
    parts = [broker_table(status), models_table(status)]
    if status["status"]["workers"]:
        parts.append(workers_table(status))
    if status["autostart"].get("jobs"):
        parts.append(jobs_table(status))
    if not available_models(status):
        parts.append(Text("No models yet. Start a worker with `mlipx serve emt`, or restart "
                          "the broker with --autostart to start workers on demand."))
    return Group(*parts)


def broker_table(status: dict) -> Table:
    data, autostart = status["status"], status["autostart"]
    table = Table(title="Broker", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("running", "yes")
    table.add_row("path", status["broker"])
    table.add_row("autostart", _autostart(autostart))
    if autostart.get("connection_file"):
        table.add_row("connection file", autostart["connection_file"])
    table.add_row("uptime", _duration(data["uptime"]))
    table.add_row("version", data["version"])
    processes, connections = len(worker_processes(data["workers"])), len(data["workers"])
    table.add_row("workers", str(processes) if processes == connections else
                  f"{processes} ({connections} connections)")
    return table


def models_table(status: dict) -> Table:
    table = Table(title="Models")
    columns = ("model", "idle", "busy", "queued", "served", "failed", "autostart")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    starting = status["autostart"].get("starting", {})
    models = available_models(status)
    running_first = sorted(models, key=lambda name: (models[name]["workers"] == 0, name))
    for name in running_first:
        info = models[name]
        services = status["status"]["services"].get(name, {})
        note = f"starting ({starting[name]:.0f} s)" if name in starting else \
            ("yes" if info["autostart"] else "no")
        table.add_row(name, str(info["idle"]), str(info["busy"]), str(info["queued"]),
                      str(services.get("served", 0)), str(services.get("failed", 0)), note)
    return table


def workers_table(status: dict) -> Table:
    """One row per worker process (a batching or prefetching worker holds several
    connections), with what the worker said of itself in READY."""
    table = Table(title="Workers")
    for column in ("worker", "model", "state", "served", "up", "host", "device", "job"):
        table.add_column(column, justify="right" if column in ("served", "up") else "left")
    for model, name, connections in worker_processes(status["status"]["workers"]):
        about = connections[0].get("metadata") or {}
        table.add_row(name, model, _state(connections),
                      str(sum(c["served"] for c in connections)),
                      _duration(max(c["since"] for c in connections)),
                      _text(about.get("host")), _text(about.get("device")),
                      _text(about.get("slurm_job")))
    return table


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
    for job in status["autostart"]["jobs"]:
        where = job["node"] if job["state"] == "RUNNING" else job["reason"]
        table.add_row(_text(job["job"]), job["model"], job["state"],
                      "" if where == "None" else where, _duration(job["age"]), job["by"])
    return table


def _autostart(autostart: dict) -> str:
    if not autostart.get("autostart"):
        return "off"
    if autostart.get("launcher") != "slurm":
        return "on"
    options = autostart.get("slurm") or {}
    partition = f", partition {options['partition']}" if options.get("partition") else ""
    gpus = f", {options['gpus']} GPU(s) per worker" if options.get("gpus") else ""
    return f"on, as SLURM jobs{partition}{gpus}"


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
