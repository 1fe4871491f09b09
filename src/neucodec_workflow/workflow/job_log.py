"""A job's log: the rule's ``log:`` file set up before heavy imports, the failure line, the start-up notes (the line
formats are record/layout.py's)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neucodec_workflow.record import layout

log = logging.getLogger(layout.JOB_LOGGER)


def setup_logging(log_file: str | None) -> None:
    """Log to the rule's ``log:`` file (and stderr); call before heavy imports."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        open(log_file, "w").close()  # a fresh log, then appended to: a resident process running the job writes too
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(level=logging.INFO, format=layout.LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)

    def log_uncaught(kind, value, tb):  # the failure reason lands in the rule's log, not only on stderr
        log.error(layout.JOB_FAILED, value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught


def process_age() -> float | None:
    """Seconds since this process started (the job's start: interpreter, Snakemake's script preamble, imports and
    all), None where the system does not say."""
    try:  # Linux: the process's start in clock ticks after boot (field 22 of /proc/self/stat), the uptime now
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StartupNotes:
    """Logs a job's start-up steps, each with the seconds since the job started (``shard S: start-up: STEP at N.NN
    s``: benchmarks/jobs.py reads them): since ``started`` (seconds since the epoch: the job's own process, where a
    resident process runs it), else since this process started."""

    def __init__(self, shard: str, started: float | None = None):
        self.shard, self.started = shard, started

    def __call__(self, step: str) -> None:
        age = process_age() if self.started is None else time.time() - self.started
        if age is not None:
            log.info("shard %s: start-up: %s at %.2f s", self.shard, step, age)


class FirstClipNoted:
    """An ``Encoder`` (the protocol in record/records.py) that notes when its first clip is encoded (the end of the
    job's start-up), and stops the job (``JobCancelled``) at the next clip once ``cancel`` is set."""

    def __init__(self, encoder: Any, note: StartupNotes, cancel: threading.Event | None = None):
        self.encoder, self.note, self.cancel = encoder, note, cancel

    @property
    def name(self) -> str:
        return str(self.encoder.name)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.encoder.provenance)

    def encode(self, clips: Any) -> Iterator[Any]:
        noted = False
        encoded = self.encoder.encode(clips)
        try:
            for item in encoded:
                if self.cancel is not None and self.cancel.is_set():
                    raise JobCancelled(f"shard {self.note.shard}: the job's process is gone (killed): stopped")
                if not noted:
                    self.note("first clip encoded")
                    noted = True
                yield item
        finally:
            getattr(encoded, "close", lambda: None)()  # the engine's read-ahead stops now, not when collected


class JobCancelled(RuntimeError):
    """The job's process is gone (killed): a resident process running it stops its work."""
