"""Worker processes this process starts: a worker's log, started in its own session (a
Ctrl-C meant for the starter does not reach it), ended by its pid, its last lines read
back to say why it failed. An autostarting broker and ``serve_model`` both start them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

TAIL_LINES = 20


def start_logged(command: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``command`` with its output appended to ``log_path``, in a session of its own."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_path, "ab") as output:
        return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=None if env is None else dict(env))


def end_processes(processes: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM (a worker then finishes the request in hand), then SIGKILL what is still
    running after ``grace`` seconds; every process is reaped."""
    alive = [proc for proc in processes if proc.poll() is None]
    for proc in alive:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a worker's output, or why there are none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(none: the file does not exist, so the worker never started)"
    except OSError as error:
        return f"(no output: {error})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"
