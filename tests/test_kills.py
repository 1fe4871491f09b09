"""Kills at any moment: SIGKILL of Snakemake's whole process group, of one encode job and of the resident process
running it, then the plain rerun.

After every kill: nothing half-written under a real name, the next plain run gets past the lock (no ``--unlock``),
removes the temporary files of the killed jobs, and in the end the tokens equal ``encode_code``'s (what every
uninterrupted run writes, test_workflow.py) and no temporary file is left. The encoder is slowed per clip by a
wrapper the test installs from outside the product in the runs it starts (support/hooks.py, through a
``sitecustomize`` on their ``PYTHONPATH``), so a kill aimed mid-encode lands there deterministically: the job's
temporary token file is open and the output does not exist. Kill times and targets come from a seeded generator.
The unit tests of ``neucodec_workflow.workflow.recovery`` (locks, owner records, temporary files) run without Snakemake.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import simple_shard, snakemake_command
from support import hooks

from neucodec_workflow.workflow import recovery

SHARDS = {"a/shard-0": [0.5, 0.4, 0.6, 0.3], "b/shard-1": [0.4, 0.5, 0.3]}
SLOW = 1.0  # seconds per clip while a kill is aimed mid-encode
TOKENS = "neucodec_tokens.parquet"
TEMP = re.compile(r"^\.(.+)\.tmp-(\d+)$")
LOCKED = ("LockException", "Directory cannot be locked")


# --- recovery, without Snakemake --------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def lock(persistence: Path, name: str = "0.output.lock") -> Path:
    path = persistence / "locks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("/some/output\n")
    return path


def record(persistence: Path, *, pid: int, locks: list[Path] = (), started_at: float = 0.0, **other: str) -> Path:
    rec = {**recovery.this_process(), "pid": pid, "start_ticks": "", "started_at": started_at, **other}
    rec["locks"] = [recovery._identity(p) for p in locks]
    recovery._write_record(persistence, rec)
    return recovery._record_path(persistence, rec)


def test_lock_of_a_dead_owner_is_removed_a_live_or_remote_one_kept(tmp_path: Path) -> None:
    p = tmp_path / ".snakemake"
    dead = lock(p, "0.input.lock")
    dead_record = record(p, pid=dead_pid(), locks=[dead])
    live = lock(p, "1.input.lock")
    record(p, pid=os.getpid(), locks=[live])  # this process: running
    remote = lock(p, "2.input.lock")
    record(p, pid=dead_pid(), locks=[remote], host="another-node")  # cannot be checked from here
    reused = lock(p, "3.input.lock")
    record(p, pid=os.getppid(), locks=[reused], start_ticks="1")  # the pid now belongs to a later process

    verdicts = {v.lock.name: v for v in recovery.release_stale_locks(p, quiet=True)}
    assert verdicts["0.input.lock"].stale and "is gone" in verdicts["0.input.lock"].reason
    assert not verdicts["1.input.lock"].stale and "is running" in verdicts["1.input.lock"].reason
    assert not verdicts["2.input.lock"].stale and "another-node" in verdicts["2.input.lock"].reason
    assert verdicts["3.input.lock"].stale
    assert not dead.exists() and not reused.exists() and live.exists() and remote.exists()
    assert not dead_record.exists(), "the record of a dead process of this machine is dropped"


def test_lock_without_owner_record(tmp_path: Path) -> None:
    """Killed between taking the lock and onstart: the lock is stale when every process that parsed before it is
    dead; with no candidate at all (a run without owner records) it is kept, and the message says what to type."""
    p = tmp_path / ".snakemake"
    record(p, pid=dead_pid(), started_at=time.time() - 60)  # parsed, never recorded a lock
    orphan = lock(p)
    assert [v.stale for v in recovery.release_stale_locks(p, quiet=True)] == [True] and not orphan.exists()

    orphan = lock(p)
    record(p, pid=os.getpid(), started_at=time.time() - 60)  # a live process parsed before it: may own it
    assert [v.stale for v in recovery.judge_locks(p)] == [False]

    q = tmp_path / "other" / ".snakemake"
    unknown = lock(q)
    (verdict,) = recovery.judge_locks(q)
    assert not verdict.stale and "no owner is known" in verdict.reason and unknown.exists()
    out = subprocess.run(
        [sys.executable, "-m", "neucodec_workflow.workflow.recovery", str(q.parent)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "0.output.lock: held: no owner is known" in out


def test_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    out = tmp_path / "shard" / "neucodec_tokens.parquet"
    out.parent.mkdir()
    dead = out.parent / f".neucodec_tokens.parquet.tmp-{dead_pid()}"
    live = out.parent / f".neucodec_tokens.parquet.tmp-{os.getpid()}"
    other = out.parent / f".metadata.parquet.tmp-{dead_pid()}"  # not an output of a job that will run: not ours
    for f in (dead, live, other):
        f.write_bytes(b"PAR1")
    # a cluster executor: the pid means nothing here, only the age counts
    assert recovery.remove_stale_temps([out], local_writers=False) == []
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    assert recovery.remove_stale_temps([out], local_writers=False, max_age_hours=1) == [dead]
    dead.write_bytes(b"PAR1")
    assert recovery.remove_stale_temps([out], local_writers=True) == [dead]
    assert live.exists() and other.exists()


# --- the workflow, killed -------------------------------------------------------------------------------------


def command(workdir: Path, config: dict[str, str]) -> list[str]:
    """The plain command a user types (what conftest.run_snakemake runs), for Popen; no inline audit."""
    quick = workdir / "no-audit.yaml"
    quick.write_text("encode:\n  audit_segments: 0\n")
    return snakemake_command(workdir, config=config, configfiles=(quick,))


def temps(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob(".*.tmp-*") if TEMP.match(p.name))


def encoding(corpus: Path, out: Path, since: float) -> tuple[str, Path] | None:
    """A shard whose encode job of the run started at ``since`` (its log is rewritten by each job) is inside the
    tokens writer with its model loaded and no output yet; the temporary file its resident process writes. (The
    resident process of a job an earlier kill stopped may still be writing its own, until its next clip.)"""
    for shard in SHARDS:
        log = out / "logs" / "encode" / f"{shard}.log"
        text = log.read_text() if log.exists() else ""
        first = datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() if len(text) > 23 else 0
        run_by = re.search(r"run by resident process (\d+)", text) if first >= since - 1 else None
        tmp = corpus / shard / f".{TOKENS}.tmp-{run_by[1]}" if run_by else None
        if tmp and tmp.exists() and "SEEDED RANDOM" in text and not (corpus / shard / TOKENS).exists():
            return shard, tmp
    return None


def job_processes(session: int) -> list[int]:
    """The encode job's own processes in Snakemake's session (its script, and a shell running it; the resident process
    that writes the tokens for it runs in a session of its own: workflow/resident.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == session:
                if b"encode_shard" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        except OSError:
            continue
    assert found, "no encode job process in the run's session"
    return found


def assert_nothing_half_written(corpus: Path, out: Path) -> None:
    """Whatever exists under a real name is complete."""
    for shard, clips in SHARDS.items():
        path = corpus / shard / TOKENS
        if path.exists():
            assert pq.read_table(path).num_rows == len(clips), f"{path} is incomplete"
    for f in out.rglob("*.json"):
        json.loads(f.read_text())
    for f in (out / "sft_dataset").rglob("*.parquet") if (out / "sft_dataset").exists() else []:
        pq.read_table(f)


@pytest.mark.workflow
@pytest.mark.kills
def test_sigkill_at_any_moment_then_plain_rerun(tmp_path: Path, random_ckpt: Path, codec) -> None:
    """≥ 20 SIGKILLs (seeded): of the whole process group at times from start-up to the derive jobs, of the group
    mid-encode, and of one encode job mid-encode; after each, the plain command (never --unlock) gets past the lock
    and removes the killed jobs' temporary files; the last run completes with tokens equal to encode_code's."""
    from neucodec_workflow.engine.reference import reference_tokens
    from neucodec_workflow.shard.audio import decode_member, iter_flac_members

    rng = random.Random(13)
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for i, (shard, durations) in enumerate(SHARDS.items()):
        simple_shard(corpus, shard, durations, seed=20 + i)
    config = {
        "corpus": str(corpus),
        "output": str(out),
        "codec": json.dumps({"weights": str(random_ckpt), "device": "cpu"}),
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    plan = ["time"] * 14 + ["group_mid_encode"] * 2 + ["job_mid_encode", "resident_mid_encode"]
    rng.shuffle(plan)
    plan += ["derive_time"] * 6  # after the encodes: kills among the derive and summarize jobs
    tally: Counter[str] = Counter()
    left_by_kill: list[Path] = []
    t0 = time.time()

    def start(slow: float) -> subprocess.Popen[str]:
        return subprocess.Popen(
            command(tmp_path, config),
            env=hooks.environ(env, **{hooks.SLOW_CLIP_ENV: str(slow)}),
            cwd=tmp_path,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def after_kill(proc: subprocess.Popen[str], kind: str) -> str:
        output = proc.communicate(timeout=120)[0]
        assert not any(s in output for s in LOCKED), f"the plain run after a kill hit a stale lock:\n{output[-3000:]}"
        if "removed the stale Snakemake lock" in output:
            tally["stale locks removed"] += 1
        # the temporary files of earlier kills whose writer is gone are removed once this run passed onstart (it
        # started a job); a resident process still writing one for a killed job removes it itself at its next clip
        if re.search(r"^(local)?rule \w+:", output, re.M):
            dead = [p for p in left_by_kill if p.exists() and not recovery.pid_alive(int(TEMP.match(p.name)[2]))]
            assert not dead, f"{kind}: temporary files of killed jobs remain"
            left_by_kill[:] = [p for p in left_by_kill if p.exists()]
        assert_nothing_half_written(corpus, out)
        left_by_kill.extend(temps(corpus, out))
        return output

    for i, kind in enumerate(plan):
        if kind == "derive_time" and tally["completed encode"] == 0:
            final = start(0)  # encode everything, uninterrupted from here
            assert final.wait(timeout=600) == 0, after_kill(final, "final")[-4000:]
            after_kill(final, "final")
            tally["completed encode"] += 1
            for name in ("shards", "sft_dataset", "stats.json"):  # derived: re-made from the token files
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        if kind.endswith("mid_encode"):  # something to encode: a killed run's resident process may have finished it
            for shard in SHARDS:
                (corpus / shard / TOKENS).unlink(missing_ok=True)
        began, proc = time.time(), start(SLOW if kind.endswith("mid_encode") else 0)
        if kind in ("time", "derive_time"):
            time.sleep(rng.uniform(0.5, 8.0) if kind == "time" else rng.uniform(0.8, 3.5))
            if proc.poll() is not None:
                tally["finished before the kill"] += 1
                after_kill(proc, kind)
                continue
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            deadline, found = time.time() + 240, None
            while time.time() < deadline and proc.poll() is None and (found := encoding(corpus, out, began)) is None:
                time.sleep(0.1)
            if found is None:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"kill {i} ({kind}): no encode job reached the writer:\n{proc.communicate()[0][-3000:]}")
            time.sleep(rng.uniform(0, SLOW * 2))  # mid-encode: clips are being written
            shard, tmp = found
            assert not (corpus / shard / TOKENS).exists() and tmp.exists(), "the kill must land mid-encode"
            if kind == "group_mid_encode":
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # the job's own (thin) process, or the resident process writing for it (the temp file's pid)
                pids = job_processes(proc.pid) if kind == "job_mid_encode" else [int(TEMP.match(tmp.name)[2])]
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                if proc.wait(timeout=120) == 0:
                    job_log = (out / "logs" / "encode" / f"{shard}.log").read_text()
                    pytest.fail(
                        f"{kind}: the run succeeded after {pids} were killed:\n{job_log}\n{proc.communicate()[0]}"
                    )
        tally[kind] += 1
        after_kill(proc, kind)

    final = start(0)
    assert final.wait(timeout=600) == 0, final.communicate()[0][-4000:]
    after_kill(final, "final")
    kills = sum(tally[k] for k in ("time", "derive_time", "group_mid_encode", "job_mid_encode", "resident_mid_encode"))
    print(f"\nkills {kills} in {time.time() - t0:.0f} s: {dict(tally)}")
    assert kills >= 20
    deadline = time.time() + 120  # resident processes still on jobs that kills stopped: each stops at its next clip
    while temps(tmp_path) and time.time() < deadline:
        time.sleep(1)
    assert not temps(tmp_path), "temporary files left behind"
    assert not list((tmp_path / ".snakemake" / "locks").glob("*.lock")), "locks left behind"
    assert not list((tmp_path / ".snakemake" / recovery.OWNERS).glob("*.json")), "owner records left behind"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["encoded"] == sum(len(d) for d in SHARDS.values()) and stats["rejected"] == 0
    for shard in SHARDS:  # tokens == encode_code's, i.e. an uninterrupted run's
        df = pd.read_parquet(corpus / shard / TOKENS)
        with open(corpus / shard / "audio.tar", "rb") as f:
            for (member, data), row in zip(iter_flac_members(f), df.itertuples(), strict=True):
                clip = decode_member(row.segment_id, member, data, 60)
                np.testing.assert_array_equal(
                    np.frombuffer(row.neucodec_tokens, "<u2"), reference_tokens(codec, clip.audio)
                )
