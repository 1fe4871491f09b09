"""After a kill: stale Snakemake locks and temporary files of killed jobs (design: docs/reliability.md).

Snakemake's lock files (``.snakemake/locks/N.input.lock`` / ``N.output.lock``, file persistence) hold the locked
paths and nothing about their owner, so after a SIGKILL every plain rerun fails with ``LockException`` until
``--unlock``, which removes every lock, a live run's too. Here each Snakemake process of this workflow keeps an
owner record, ``.snakemake/neucodec_owners/<host>.<pid>.json``: written when the Snakefile is parsed (pid, host,
boot id, pid namespace, process start time), completed in ``onstart`` with the lock files it holds (name, inode,
mtime), and removed when the process exits. ``release_stale_locks`` (called while the Snakefile is parsed, which is
before Snakemake checks the lock) removes a lock file only when every process that may own it is known dead:

* its owner (the record naming that exact lock file) ran on this machine (same host name, boot id and pid
  namespace) and its pid is gone or now belongs to a process that started later;
* a lock file no record names (its owner was killed between taking the lock and ``onstart``) is removed when every
  record without locks that was written before the lock file is of such a dead process, and there is at least one.

A lock whose owner runs on another host, or is alive, or is unknown is kept, and the reason is printed (owner pid,
host, start) with what to type when that process is gone: ``snakemake --unlock``. So several Snakemake processes on
several hosts may share a directory: none ever removes a lock it cannot prove stale.

``remove_stale_temps`` (from ``onstart``: this run holds the lock on every output it will make, and none of its jobs
has started) removes the hidden temporary files of killed writers (``contract.atomic_path``:
``.<output name>.tmp-<pid>``) beside the outputs of the jobs this run will run, local or the storage plugin's local
copies of S3 outputs (a temporary file is never uploaded: only outputs are). The name holds the writer's pid but not
its host, so with the local executor (every job of the workflow runs on this machine) a file whose pid is not running
here is removed; with a cluster executor (the writer ran on some node) only a file untouched for
``NEUCODEC_STALE_TEMP_HOURS`` (default 24) hours. A file whose pid runs here (e.g. a job orphaned by a kill of
Snakemake alone, still writing) is kept until it is that old.

``python -m neucodec_workflow.workflow.recovery [DIR] [--release]`` shows who holds the locks of DIR (default: here) and,
with ``--release``, removes the stale ones.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OWNERS = "neucodec_owners"  # under .snakemake/
LOCK_NAME = re.compile(r"^\d+\.(input|output)\.lock$")
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")  # contract.atomic_path
STALE_TEMP_HOURS_ENV = "NEUCODEC_STALE_TEMP_HOURS"
DEFAULT_STALE_TEMP_HOURS = 24.0


# --- who is this process, and is that one alive -----------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22); empty when unknown."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split()[19] if ")" in stat else ""


def machine() -> dict[str, str]:
    """What makes a pid meaningful: host name, boot id, pid namespace (containers on one host differ in it)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {**machine(), "pid": pid, "start_ticks": _start_ticks(pid), "started_at": time.time(), "locks": []}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def state(record: dict[str, Any], here: dict[str, str] | None = None) -> str:
    """``dead``, ``alive``, or ``unknown`` (another host, boot or pid namespace: nothing can be checked from here)."""
    here = here or machine()
    if record.get("host") != here["host"] or record.get("pidns", "") != here["pidns"]:
        return "unknown"
    if record.get("boot_id") and here["boot_id"] and record["boot_id"] != here["boot_id"]:
        return "dead"  # same machine, rebooted since
    pid = int(record.get("pid", 0))
    if pid <= 0 or not pid_alive(pid):
        return "dead"
    ticks = _start_ticks(pid)
    if record.get("start_ticks") and ticks and ticks != record["start_ticks"]:
        return "dead"  # the pid was reused by a later process
    return "alive"


def describe(record: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started_at", 0))))
    return f"snakemake pid {record.get('pid')} on host {record.get('host')} (started {started})"


# --- owner records and locks ------------------------------------------------------------------------------------


@dataclass
class LockVerdict:
    lock: Path
    stale: bool
    reason: str


def _owners_dir(persistence: Path) -> Path:
    return persistence / OWNERS


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)


def _record_path(persistence: Path, record: dict[str, Any]) -> Path:
    return _owners_dir(persistence) / f"{_safe_host(str(record['host']))}.{record['pid']}.json"


def _write_record(persistence: Path, record: dict[str, Any]) -> None:
    path = _record_path(persistence, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, path)


def _records(persistence: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(_owners_dir(persistence).glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):  # being replaced, or half-written by a killed process: not an owner
            continue
    return out


def _lock_files(persistence: Path) -> list[Path]:
    locks = persistence / "locks"
    return sorted(p for p in locks.iterdir() if LOCK_NAME.match(p.name)) if locks.is_dir() else []


def _identity(lock: Path) -> dict[str, Any]:
    st = lock.stat()
    return {"name": lock.name, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}


def judge_locks(persistence: Path, here: dict[str, str] | None = None) -> list[LockVerdict]:
    """Each lock file of ``persistence`` (``.snakemake``): stale (its owner is known dead) or not, and why."""
    here = here or machine()
    records = _records(persistence)
    verdicts = []
    for lock in _lock_files(persistence):
        try:
            ident = _identity(lock)
        except FileNotFoundError:  # released meanwhile
            continue
        owners = [r for _, r in records if ident in r.get("locks", [])]
        if not owners:  # killed between taking the lock and onstart: any process that parsed before could own it
            owners = [r for _, r in records if not r.get("locks") and r.get("started_at", 0) <= lock.stat().st_mtime]
        states = [(state(r, here), r) for r in owners]
        if not owners:
            reason = "no owner is known (taken by a Snakemake run without this workflow's owner records)"
            verdicts.append(LockVerdict(lock, False, reason))
        elif all(s == "dead" for s, _ in states):
            verdicts.append(LockVerdict(lock, True, "; ".join(f"{describe(r)} is gone" for _, r in states)))
        else:
            live = [
                f"{describe(r)} is {'running' if s == 'alive' else 'on another machine'}"
                for s, r in states
                if s != "dead"
            ]
            verdicts.append(LockVerdict(lock, False, "; ".join(live)))
    return verdicts


def release_stale_locks(persistence: Path, *, quiet: bool = False) -> list[LockVerdict]:
    """Remove lock files whose owners are known dead, and the records of dead processes on this machine; print why
    a remaining lock is kept (and what to type). Returns the verdicts."""
    here = machine()
    verdicts = judge_locks(persistence, here)
    for v in verdicts:
        if v.stale:
            with contextlib.suppress(FileNotFoundError):
                v.lock.unlink()
            _say(f"removed the stale Snakemake lock {v.lock.name}: {v.reason}", quiet)
    kept = [v for v in verdicts if not v.stale]
    if kept and not quiet:
        reasons = sorted({v.reason for v in kept})
        _say(
            f"{persistence}/locks is held: {'; '.join(reasons)}. If no Snakemake process runs in this directory "
            "any more, run `snakemake --unlock` once.",
            quiet,
        )
    me = os.getpid()
    for path, record in _records(persistence):
        if record.get("pid") != me and state(record, here) == "dead":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    owners = _owners_dir(persistence)
    if owners.is_dir():  # records half-written by a killed process of this machine
        for tmp in owners.glob(".*.tmp-*"):
            pid = tmp.name.rpartition("-")[2]
            if tmp.name.startswith(f".{_safe_host(here['host'])}.") and pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return verdicts


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"neucodec-workflow: {message}", file=sys.stderr, flush=True)


# --- temporary files of killed writers --------------------------------------------------------------------------


def stale_temp_hours() -> float:
    raw = os.environ.get(STALE_TEMP_HOURS_ENV) or str(DEFAULT_STALE_TEMP_HOURS)
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{STALE_TEMP_HOURS_ENV}={raw!r}: expected a number of hours") from None


def remove_stale_temps(
    outputs: Iterable[Path], *, local_writers: bool, max_age_hours: float | None = None
) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files beside ``outputs`` whose writer cannot be running: (``local_writers``:
    every writer ran on this machine) its pid is not running here, or the file is older than ``max_age_hours``.
    Returns what was removed."""
    max_age = 3600 * (stale_temp_hours() if max_age_hours is None else max_age_hours)
    wanted: dict[Path, set[str]] = {}
    for out in outputs:
        wanted.setdefault(out.parent, set()).add(out.name)
    removed, now = [], time.time()
    for parent, names in wanted.items():
        try:
            entries = list(os.scandir(parent))
        except OSError:  # not there (yet): nothing to clean
            continue
        for entry in entries:
            m = TEMP_NAME.match(entry.name)
            if not m or m["name"] not in names:
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            dead_here = local_writers and not pid_alive(int(m["pid"]))
            if dead_here or age > max_age:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


# --- the Snakefile's calls --------------------------------------------------------------------------------------


def _persistence() -> Path:
    return Path.cwd() / ".snakemake"  # the API changed into the working directory (--directory) before parsing


def _main_process(workflow: Any) -> bool:
    """Only the process a user started takes locks; job processes (cluster jobs, subprocesses) never do."""
    return not (getattr(workflow, "remote_exec", False) or getattr(workflow, "subprocess_exec", False))


def at_parse(workflow: Any) -> None:
    """Snakefile, at parse time (before Snakemake checks its lock): record this process as a possible owner and
    remove locks whose owners are known dead."""
    if not _main_process(workflow):
        return
    persistence = _persistence()
    record = this_process()
    try:
        release_stale_locks(persistence)
        _write_record(persistence, record)
    except OSError as exc:  # a read-only or odd working directory: Snakemake's own lock handling still applies
        log.warning("lock owner records unavailable in %s: %s", persistence, exc)
        return
    path = _record_path(persistence, record)
    atexit.register(lambda: path.unlink(missing_ok=True))
    workflow._neucodec_owner = record  # on_start completes it


def on_start(workflow: Any) -> None:
    """Snakefile ``onstart`` (this run holds its lock, no job has started): record the lock files this process holds,
    and remove the temporary files of killed writers beside the outputs of the jobs that will run."""
    if not _main_process(workflow):
        return
    persistence = _persistence()
    record = getattr(workflow, "_neucodec_owner", None)
    held = getattr(getattr(workflow, "persistence", None), "_lockfile", {}) or {}  # FilePersistence: type -> path
    if record is not None and held:
        locks = []
        for path in held.values():
            with contextlib.suppress(FileNotFoundError):
                locks.append(_identity(Path(path)))
        record["locks"] = locks
        with contextlib.suppress(OSError):
            _write_record(persistence, record)
    outputs = [_local_path(f) for job in workflow.dag.needrun_jobs() for f in job.output]
    removed = remove_stale_temps(outputs, local_writers=bool(getattr(workflow, "local_exec", True)))
    if removed:
        print(
            f"neucodec-workflow: removed {len(removed)} temporary file(s) of killed jobs: "
            + ", ".join(str(p) for p in removed[:5])
            + (" ..." if len(removed) > 5 else ""),
            file=sys.stderr,
            flush=True,
        )


RECEIPTS = "neucodec_uploads"  # under .snakemake/: one folder per Snakemake process, one file per job


def receipts_dir(persistence: Path) -> Path:
    """Where this Snakemake process's jobs leave their receipts (``persistence``: the ``.snakemake`` folder). The
    folder is removed when this process exits; those of processes of this host that are gone (killed) now."""
    host = socket.gethostname().split(".")[0]
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(persistence / RECEIPTS):
            name, _, pid = entry.name.rpartition(".")
            if name == host and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
    mine = persistence / RECEIPTS / f"{host}.{os.getpid()}"
    atexit.register(shutil.rmtree, mine, ignore_errors=True)
    return mine


def remove_empty_tree(root: str | Path) -> None:
    """Remove the empty folders under ``root``, then ``root`` and its parent when they are empty: at the exit of a
    cluster job's Snakemake processes, what is left of its node-local copies (the job removes its files)."""
    root = Path(root)
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    with contextlib.suppress(OSError):
        os.rmdir(root.parent)


def _local_path(f: Any) -> Path:
    """Where a job writes an output: the path, or for a storage file (S3) the plugin's local copy."""
    if getattr(f, "is_storage", False):
        return Path(f.storage_object.local_path())
    return Path(str(f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Who holds the Snakemake locks of a working directory.")
    ap.add_argument("directory", nargs="?", default=".", help="the working directory (holding .snakemake/)")
    ap.add_argument("--release", action="store_true", help="remove the locks whose owners are known dead")
    args = ap.parse_args(argv)
    persistence = Path(args.directory) / ".snakemake"
    verdicts = release_stale_locks(persistence, quiet=True) if args.release else judge_locks(persistence)
    if not verdicts:
        print(f"{persistence}: not locked")
    for v in verdicts:
        action = ("removed" if args.release else "stale") if v.stale else "held"
        print(f"{v.lock.name}: {action}: {v.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
