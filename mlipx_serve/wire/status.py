"""What an autostarting model broker says of itself (``mmi.mlipx``), as typed records.

The broker builds a ``ServingStatus`` and sends ``to_json()``; a client reads it back
with ``ServingStatus.from_json`` (a broker that starts no workers answers nothing, which
reads as ``autostart=False``). ``mlipx serve-status --json`` prints the JSON as it came.
The MMI services of the model broker are named here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlipx_serve.wire.worker_options import WorkerOptions

STATUS_SERVICE = "mmi.mlipx"  # this record
DEFINE_SERVICE = "mmi.mlipx.define"  # start workers from a client's definition
POLL_SERVICE = "mmi.mlipx.poll"  # look at squeue now (after serve-submit)


@dataclass
class ModelOffer:
    """A model the broker can start workers for."""

    extras: list[str] = field(default_factory=list)
    defined_by: str = "broker"  # "broker": built in or a models file; "client": mmi.mlipx.define
    fingerprint: str | None = None  # None: a model without a definition
    definition: dict[str, Any] | None = None  # its identity (protocol/model-definition.md)
    short: str | None = None  # the definition in one line, for people
    start_with: str | None = None  # a client's: its workers' --definition (worker_options)
    serving: dict[str, Any] = field(default_factory=dict)  # its settings (wire/serving.py)
    devices: list[str] = field(default_factory=list)  # the GPUs its workers may use
    max_workers: int = 1  # the worker processes it may have, on all its GPUs


@dataclass
class JobRecord:
    """A SLURM job of the broker's that has not ended."""

    job: str | None  # None while sbatch has not answered
    model: str
    state: str
    reason: str
    node: str
    by: str  # "autostart", or "serve-submit" for a job the broker found by its name
    age: float  # seconds since it was submitted, or found


@dataclass
class ServingStatus:
    autostart: bool = False
    models: dict[str, ModelOffer] = field(default_factory=dict)
    starting: dict[str, float] = field(default_factory=dict)  # model -> seconds so far
    progress: dict[str, str] = field(default_factory=dict)  # model -> what its start does
    start_timeout: float | None = None
    worker: WorkerOptions | None = None  # what every started worker is told (model "")
    launcher: str | None = None  # "local" or "slurm"
    started_pids: list[int] = field(default_factory=list)  # local: workers running now
    broker_id: str | None = None  # slurm: the broker's id, in its jobs' names
    connection_file: str | None = None
    log_dir: str | None = None
    slurm: dict[str, Any] | None = None  # the sbatch options (SlurmOptions.as_dict)
    jobs: list[JobRecord] = field(default_factory=list)
    worker_limit: int | None = None  # worker processes at once, over all models (None: no limit)
    running_workers: int = 0  # those it runs now, starting ones included
    retired: dict[str, int] = field(default_factory=dict)  # model -> idle workers retired
    waiting_for_room: list[str] = field(default_factory=list)  # models whose requests wait

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["worker"] = self.worker.to_json() if self.worker else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ServingStatus:
        if not data:
            return cls()
        status = _record(cls, data)
        status.models = {name: _record(ModelOffer, offer) for name, offer in status.models.items()}
        status.jobs = [_record(JobRecord, job) for job in status.jobs]
        status.worker = WorkerOptions.from_json(status.worker) if status.worker else None
        return status


def _record(kind: type, data: Mapping[str, Any]) -> Any:
    """A record of ``kind`` from JSON; keys it does not know (a newer broker's) are left."""
    known = {item.name for item in dataclasses.fields(kind)}
    return kind(**{key: value for key, value in data.items() if key in known})
