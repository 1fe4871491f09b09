"""The resident process: keeps torch, transformers and the codec loaded between a node's jobs, and runs them.

An encode job spends ~8 s importing torch and transformers and loading the model before its first clip
(benchmarks/results/jobs.md); on a GPU that is most of a small shard's job. So the rule's script is a thin process
(no torch) that hands its job to a resident process and exits as the job would have: 0, or with its error.

- **Who runs what.** The script connects to the resident process's Unix socket and sends the job: its name (``JOBS``),
  its keyword arguments, its working directory, its log file and its start time. The resident process runs it,
  appending to the job's log, and answers with the outcome. One job at a time per resident process: a job that finds
  it busy goes to the next slot, its own process. So there are as many resident processes as encode jobs running at
  once (one per GPU on a multi-GPU box), each claiming its GPU once (engine/device.py).
- **Lifetime.** The first job that finds no process in a slot starts one (under a lock per slot), in its own session,
  so killing Snakemake's process group leaves it alone; it exits after ``idle_seconds`` without a job
  (``encode.keep_loaded_seconds``; 0: every job loads the model in its own process, as before). Not yet inside
  SLURM jobs: there each job still runs in its own process (``run_job``).
- **Never the wrong process.** Sockets are named by what shapes a job: the Python, this package's sources (a newer
  file, a new process), the environment (S3 settings, threads, ...) and the user. A changed checkout or setting
  never meets an old process.
- **Kills and crashes.** A killed job closes its connection: its work stops at the next clip, its temporary file is
  removed as on any error. A resident process that dies fails the jobs it was running (the error says so); the next
  job starts a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import inspect
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neucodec_workflow.record import layout

log = logging.getLogger(layout.JOB_LOGGER)

# What a resident process may run: job name -> "module:function", called with keyword arguments, plus where it
# declares them ``started`` (the job's start time) and ``cancel`` (an event set when the job's process is gone).
JOBS = {
    "encode_shard": "neucodec_workflow.workflow.encode_jobs:encode_shard_job",
    "audit_shard": "neucodec_workflow.workflow.encode_jobs:audit_job",
    "codec_fit": "neucodec_workflow.quality.codec_fit:codec_fit_job",
}
SLOTS = 64  # resident processes per key at most: encode jobs running at once on one node
START_SECONDS = 600.0  # how long a job waits for the process it started to listen
_PACKAGE = Path(__file__).resolve().parents[1]
# what differs between jobs without shaping them: the shell's directories (a job runs in the directory it sends),
# pytest's current test
_VOLATILE = {"PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST"}
_served: list[str] = []  # the jobs this resident process ran


class ResidentJobError(RuntimeError):
    """A job that failed in the resident process: its message is the job's error."""


def run_job(name: str, kwargs: dict[str, Any], *, idle_seconds: float, log_file: str | None) -> None:
    """Run job ``name`` (``JOBS``) with ``kwargs``: in a resident process when ``idle_seconds`` > 0, else here.
    Inside a SLURM job always here: a resident process there is not yet validated against the cluster tests (a
    temporary file left in a job's node-local scratch, 2026-12-08), so cluster jobs keep one process each."""
    if idle_seconds <= 0 or os.environ.get("SLURM_JOB_ID"):
        _job_function(name)(**kwargs)
        return
    request = {
        "job": name,
        "kwargs": kwargs,
        "cwd": os.getcwd(),
        "log": str(Path(log_file).resolve()) if log_file else None,
        "started": job_started(),
    }
    directory, key = _socket_dir(), process_key()
    for slot in range(SLOTS):
        answer = _ask(directory / f"neucodec-resident-{key}-{slot}.sock", request, idle_seconds)
        if answer is not None:
            if not answer["ok"]:
                log.error("%s", answer["traceback"].rstrip())
                raise ResidentJobError(answer["error"])
            return
    raise RuntimeError(f"all {SLOTS} resident processes of this node are busy")


def job_started() -> float:
    """When this process started (seconds since the epoch): a job's start-up is timed from it."""
    from neucodec_workflow.workflow.job_log import process_age

    return time.time() - (process_age() or 0.0)


def process_key() -> str:
    """What a resident process must share with the jobs it runs, hashed: Python, package sources, environment."""
    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE)
    newest = max(p.stat().st_mtime_ns for p in _PACKAGE.rglob("*.py"))
    what = [sys.executable, str(_PACKAGE), newest, env, os.getuid()]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _socket_dir() -> Path:
    directory = Path(tempfile.gettempdir())
    return directory if len(str(directory)) < 60 else Path("/tmp")  # a socket's path is at most 107 bytes


def _job_function(name: str) -> Any:
    module, _, function = JOBS[name].partition(":")
    return getattr(importlib.import_module(module), function)


# --- the job's side ---------------------------------------------------------------------------------------------


def _ask(path: Path, request: dict[str, Any], idle_seconds: float) -> dict[str, Any] | None:
    """The job's outcome from the process at ``path`` (started if none listens there); None when it is busy."""
    for _ in range(3):  # a process that was exiting, idle, as we connected: start another
        conn = _connect(path) or _start(path, idle_seconds)
        with conn, conn.makefile("rwb") as stream:
            first = _read(stream)  # it says first whether it is free
            if first is None:
                continue
            if first.get("busy"):
                return None
            try:
                stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
            except OSError:  # it died before the job began
                continue
            answer = _read(stream)  # the job runs: as long as it takes
            if answer is None:
                raise ResidentJobError(
                    f"the resident process running this job exited during it (its log: {path.with_suffix('.log').name}"
                    " in the temporary directory)"
                )
            return answer
    raise RuntimeError(f"the resident process at {path.name} keeps closing connections unanswered")


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:  # none there, or a stale socket of a dead process
        conn.close()
        return None
    return conn


def _start(path: Path, idle_seconds: float) -> socket.socket:
    """Start the resident process for ``path`` (one starter per slot at a time) and connect to it."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)  # another job started it while we waited
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with open(path.with_suffix(".log"), "wb") as out:  # the last process of this slot: its log
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(path), str(idle_seconds)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            conn = _connect(path)
            if conn is not None:
                return conn
            if process.poll() is not None:
                raise RuntimeError(f"the resident process exited at start ({process.returncode}); see {path.name}.log")
            time.sleep(0.05)
        process.kill()
        raise RuntimeError(f"the resident process did not listen within {START_SECONDS:.0f} s")


def _read(stream: Any) -> dict[str, Any] | None:
    line = stream.readline()
    return json.loads(line) if line else None


# --- the resident process ---------------------------------------------------------------------------------------


def serve(path: Path, idle_seconds: float) -> None:
    """Answer jobs at ``path``, one at a time (others get ``busy``), until idle for ``idle_seconds``."""
    logging.basicConfig(level=logging.INFO, format=layout.LOG_FORMAT, force=True)
    logging.captureWarnings(True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o077)  # only this user may connect (and so hand it jobs)
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    listener.listen(16)
    listener.settimeout(1.0)
    mine = path.stat().st_ino
    busy = threading.Lock()
    last = [time.monotonic()]
    log.info("resident process %d: listening (exits after %.0f s without a job)", os.getpid(), idle_seconds)
    try:
        while busy.locked() or time.monotonic() - last[0] < idle_seconds:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if busy.acquire(blocking=False):
                threading.Thread(target=_serve_one, args=(conn, busy, last), daemon=True).start()
            else:
                with conn:
                    _send(conn, {"busy": True})
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == mine:  # not a newer process's socket
                path.unlink()
    log.info("resident process %d: idle for %.0f s, exiting", os.getpid(), idle_seconds)


def _serve_one(conn: socket.socket, busy: threading.Lock, last: list[float]) -> None:
    done = False
    try:
        with conn, conn.makefile("rb") as stream:
            _send(conn, {"busy": False})
            request = _read(stream)
            if request is None:
                return
            cancel = threading.Event()
            threading.Thread(target=_watch, args=(conn, cancel), daemon=True).start()
            answer = _run(request, cancel)
            last[0], done = time.monotonic(), True
            busy.release()  # before answering: the job's next one may come at once
            _send(conn, answer)
    except OSError:  # the job's process is gone: nobody to answer
        pass
    finally:
        if not done:
            last[0] = time.monotonic()
            busy.release()


def _watch(conn: socket.socket, cancel: threading.Event) -> None:
    """Set ``cancel`` when the job's process closes its end (it sends nothing more: recv returns at its exit)."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    cancel.set()


def _run(request: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
    """Run one job in its working directory, its log lines appended to its log file."""
    os.chdir(request["cwd"])
    _served.append(request["job"])
    t0 = time.monotonic()
    answer: dict[str, Any] = {"ok": True}
    with _logging_to(request["log"]):
        log.info("%s: run by resident process %d (its job %d)", request["job"], os.getpid(), len(_served))
        try:
            function = _job_function(request["job"])
            known = inspect.signature(function).parameters
            extra = {k: v for k, v in (("started", request["started"]), ("cancel", cancel)) if k in known}
            function(**request["kwargs"], **extra)
        except BaseException as e:  # noqa: BLE001 (the job's error goes back to the job, the process goes on)
            answer = {"ok": False, "error": str(e) or type(e).__name__, "traceback": traceback.format_exc()}
    outcome = "done" if answer["ok"] else f"failed: {answer['error']}"  # in this process's own log only
    log.info("job %d (%s) %s in %.1f s", len(_served), request["job"], outcome, time.monotonic() - t0)
    return answer


@contextlib.contextmanager
def _logging_to(log_file: str | None) -> Iterator[None]:
    handler = logging.FileHandler(log_file, mode="a") if log_file else logging.NullHandler()
    handler.setFormatter(logging.Formatter(layout.LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]))
