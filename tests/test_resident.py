"""The resident process (workflow/resident.py): jobs handed to it from outside, as the rule's script does.

Real encodes of tiny real shards with the session's seeded random checkpoint; the model is loaded once per resident
process, a failing job fails alone, a busy process sends a job to the next slot. Kills of a job and of the resident
process mid-encode: tests/test_kills.py.
"""

from __future__ import annotations

import re
import stat
import tempfile
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import simple_shard

from neucodec_workflow.workflow.resident import ResidentJobError, process_key, run_job

RUN_BY = re.compile(r"encode_shard: run by resident process (\d+) \(its job (\d+)\)")
IDLE = 20.0  # seconds: the processes these tests start leave soon after


def encode(tmp_path: Path, shard: str, ckpt: Path, idle: float, **changed: str) -> tuple[Path, str]:
    """One encode job of ``shard`` under ``tmp_path/corpus`` through run_job, as scripts/encode_shard.py runs it."""
    log = tmp_path / "logs" / f"{shard}-{idle:g}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    tokens = tmp_path / f"out-{idle:g}" / shard / "neucodec_tokens.parquet"
    kwargs = dict(
        shard=shard,
        tar=f"corpus/{shard}/audio.tar",  # relative: the job's working directory travels with it
        metadata=f"corpus/{shard}/metadata.parquet",
        tokens=str(tokens),
        codec={"weights": str(ckpt), "seed": 0, "device": "cpu"},
        encode={"mode": "exact", "batch_seconds": 30, "max_seconds": 120, "decode_workers": 1, "audit_segments": 0},
        columns={"segment_id": "segment_id"},
        threads=1,
    )
    run_job("encode_shard", {**kwargs, **changed}, idle_seconds=idle, log_file=str(log))
    return tokens, log.read_text()


@pytest.fixture()
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for i in range(3):
        simple_shard(tmp_path / "corpus", f"s{i}", [0.4, 0.3], seed=10 * i)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_jobs_share_one_resident_process_and_write_what_their_own_process_would(
    corpus: Path, random_ckpt: Path
) -> None:
    runs = [RUN_BY.search(encode(corpus, f"s{i}", random_ckpt, IDLE)[1]) for i in range(2)]
    assert all(runs), "each job's log names the resident process that ran it"
    (pid0, n0), (pid1, n1) = (r.groups() for r in runs)
    assert pid0 == pid1 and int(n1) == int(n0) + 1, "the second job ran in the first one's process"
    sockets = list(Path(tempfile.gettempdir()).glob(f"neucodec-resident-{process_key()}-*.sock"))
    assert sockets and all(stat.S_IMODE(s.stat().st_mode) & 0o077 == 0 for s in sockets), "only this user connects"
    for i in range(2):  # the same tokens as a job that loads the model in its own process
        here, log = encode(corpus, f"s{i}", random_ckpt, 0)
        assert "run by resident process" not in log
        hosted = pq.read_table(corpus / f"out-{IDLE:g}" / f"s{i}" / "neucodec_tokens.parquet")
        assert hosted.column("neucodec_tokens").equals(pq.read_table(here).column("neucodec_tokens"))


@pytest.mark.slow
def test_a_failing_job_fails_alone_and_the_process_goes_on(corpus: Path, random_ckpt: Path) -> None:
    with pytest.raises(ResidentJobError, match=r"s0.*no_such_column|no_such_column.*s0"):
        encode(corpus, "s0", random_ckpt, IDLE, columns={"segment_id": "no_such_column"})
    first = RUN_BY.search((corpus / "logs" / f"s0-{IDLE:g}.log").read_text())
    tokens, log = encode(corpus, "s1", random_ckpt, IDLE)
    assert pq.read_table(tokens).num_rows == 2
    assert first and RUN_BY.search(log)[1] == first[1], "the next job ran in the same process"


@pytest.mark.slow
def test_a_busy_process_sends_the_job_to_the_next_slot(corpus: Path, random_ckpt: Path) -> None:
    logs: dict[str, str] = {}

    def job(shard: str) -> None:
        logs[shard] = encode(corpus, shard, random_ckpt, IDLE)[1]

    threads = [threading.Thread(target=job, args=(f"s{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert set(logs) == {"s0", "s1"}, "both jobs finished"
    pids = {RUN_BY.search(log)[1] for log in logs.values()}
    assert len(pids) == 2, "two jobs at once ran in two resident processes"
