"""The seed's own setting: the corpus and the output in S3, the encode jobs on a SLURM cluster, the committed
`gpu-cluster` profile (with test_slurm.py's overrides only where the test cluster differs from a real one).

A real single-node SLURM (.ci/slurm-cluster.sh, as in test_slurm.py) and the loopback S3 server (moto) that counts
every request; this test's middleware also records each request's method and key, and can hold one until released.
Checked: the first run completes with every encode job run exactly once and every token file sent exactly once; the
token files, reports, dataset parts, stats and card are in the bucket; a dry-run afterwards has nothing to do; a deleted
token object is encoded again alone, and two with `--group-components encode=2` in one job; nothing stays on the
node's scratch; a job killed (scancel) while it sends its token file as a multipart upload leaves no object and, after
the plain rerun, no open upload; and the whole run through the fault-injecting proxy (5 % of requests) gives the same
tokens. Request counts per shard and stage times are printed (benchmarks/results/cluster_s3.md records them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from test_s3 import ACCESS_KEY, SECRET  # the S3 sentinels (test_secret_scan allows them)
from test_slurm import RUN_TIMEOUT_S, TEST_OVERRIDES, cluster, slurm_jobs  # noqa: F401 (cluster: a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

BUCKET = "corpus"
SHARDS = ["a/shard-0", "a/shard-1", "b/shard-0"]
ENCODE_COMMENT = "rule_encode_encode_shard"
TOKENS = "neucodec_tokens.parquet"


class Recorder:
    """Loopback-server middleware: records (method, key, query) of every S3 request; ``hold(pred)`` keeps the first
    request for which ``pred(method, key, query)`` is true waiting until ``release()``."""

    def __init__(self, server: Any):
        self.counting, self.inner = server.app, server.app.app
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []
        self._hold: Any = None
        self.held = threading.Event()
        self._released = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        key = path.lstrip("/").partition("/")[2]
        with self.lock:
            self.requests.append((method, key, query))
            hold = self._hold is not None and self._hold(method, key, query)
            if hold:
                self._hold = None
        if hold:
            self.held.set()
            self._released.wait(timeout=300)
        return self.inner(environ, start_response)

    def hold(self, pred: Any) -> None:
        self.held.clear()
        self._released.clear()
        self._hold = pred

    def release(self) -> None:
        self._released.set()

    def take(self) -> list[tuple[str, str, str]]:
        with self.lock:
            out, self.requests = self.requests, []
            return out


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3, shard_bytes

    from neucodec_workflow.storage.s3 import S3Settings

    with LoopbackS3() as server:
        client = S3Settings(
            endpoint_url=server.endpoint, region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET
        ).client()
        client.create_bucket(Bucket=BUCKET)
        for i, shard in enumerate(SHARDS):
            tar, meta = shard_bytes(2, 1.0, seed=10 * i)
            for prefix in ("data", "faults/data"):
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/audio.tar", Body=tar)
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/metadata.parquet", Body=meta)
        recorder = Recorder(server)
        server.app.app = recorder
        yield server, client, recorder


def keys(client: Any, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def tokens_of(client: Any, key: str) -> dict[str, list[int]]:
    import io

    df = pd.read_parquet(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    return {r.segment_id: np.frombuffer(r.neucodec_tokens, dtype=np.uint16).tolist() for r in df.itertuples()}


def run(cluster_env: dict[str, str], endpoint: str, work: Path, ckpt: Path, prefix: str, *args: str) -> str:
    """`snakemake --profile <repo>/gpu-cluster` with corpus s3://corpus/{prefix}/data, output .../out; its output."""
    env = {k: v for k, v in cluster_env.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_"))}
    env.update(
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=endpoint,
        SNAKEMAKE_STORAGE_S3_REGION="us-east-1",
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY=ACCESS_KEY,
        SNAKEMAKE_STORAGE_S3_SECRET_KEY=SECRET,
        NEUCODEC_S3_REQUIRE_ENDPOINT="1",
        AWS_CONFIG_FILE=str(work / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    root = f"s3://{BUCKET}/{prefix}".rstrip("/")
    config = work / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "corpus": f"{root}/data",
                "output": f"{root}/out",
                "codec": {"weights": str(ckpt), "seed": 0, "device": "auto"},
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(REPO / "gpu-cluster"),
        "--directory",
        str(work),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(config),
        *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"snakemake did not finish within {RUN_TIMEOUT_S} s:\n{out[-6000:]}")
    assert SECRET not in out
    return f"rc={proc.returncode}\n{out}"


def ok(out: str) -> bool:
    return out.startswith("rc=0\n")


def encode_jobs(env: dict[str, str], before: set[int]) -> list[int]:
    return sorted(j for j, info in slurm_jobs(env).items() if j not in before and info["comment"] == ENCODE_COMMENT)


def puts_of(requests: list[tuple[str, str, str]], key: str) -> int:
    """Times ``key`` was written: PUTs of the object (not of its parts) and completed multipart uploads."""
    return sum(
        1
        for method, k, query in requests
        if k == key and ((method == "PUT" and "partNumber" not in query) or (method == "POST" and "uploadId" in query))
    )


def by_kind(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for method, key, query in requests:
        kinds["LIST" if method == "GET" and (not key or "list-type" in query or "prefix=" in query) else method] += 1
    return dict(kinds)


def scratch_dirs(jobs: list[int]) -> list[str]:
    return [d for j in jobs if os.path.exists(d := f"/tmp/neucodec-storage-{j}")]


def stage_times(out: str) -> dict[str, str]:
    """Per rule, from Snakemake's output: first start to last finish (its time stamps have whole seconds)."""
    from datetime import datetime

    spans: dict[str, list[float]] = {}
    stamp = None
    for line in out.splitlines():
        if m := re.match(r"^\s*\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").timestamp()
        elif (m := re.match(r"^\s*(?:local)?rule (\w+):$", line)) and stamp is not None:
            spans.setdefault(m.group(1), [stamp, stamp])
        elif (m := re.match(r"^Finished jobid: \d+ \(Rule: (\w+)\)", line)) and stamp is not None:
            spans.setdefault(m.group(1), [stamp, stamp])[1] = stamp
    t0 = min((a for a, _ in spans.values()), default=0.0)
    return {rule: f"{a - t0:.0f}-{b - t0:.0f} s" for rule, (a, b) in sorted(spans.items(), key=lambda kv: kv[1])}


def print_job_start_up(env: dict[str, str], work: Path, jobs: list[int]) -> None:
    """Per encode job: seconds from its SLURM start to the first line of its log (its two Snakemake processes and the
    job's imports) and to the model built (its first clip follows), for benchmarks/results/cluster_s3.md."""
    from datetime import datetime

    starts = {j: datetime.fromisoformat(info["start"]).timestamp() for j, info in slurm_jobs(env).items()}
    for log in sorted((work / "local_output" / "logs" / "encode").rglob("*.log")):
        text = log.read_text()
        m = re.search(r"SLURM_JOB_ID=(\d+)", text)
        stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*?(device=|RANDOM WEIGHTS)", text, re.M)
        if not m or int(m.group(1)) not in jobs or len(stamps) < 2:
            continue
        t = {what: datetime.strptime(at, "%Y-%m-%d %H:%M:%S").timestamp() for at, what in stamps}
        start = starts[int(m.group(1))]
        print(
            f"job {m.group(1)} ({log.relative_to(work)}): log begins {t['device='] - start:.0f} s after the job "
            f"starts, model built {t['RANDOM WEIGHTS'] - start:.0f} s after"
        )


def test_corpus_in_s3_encoded_by_cluster_jobs(cluster, s3, random_ckpt, tmp_path):  # noqa: F811
    server, client, rec = s3
    env = cluster
    work = tmp_path / "work"
    work.mkdir()
    seen = set(slurm_jobs(env))

    # Dry-run: the pending shards.
    rec.take()
    dry = run(env, server.endpoint, work, random_ckpt, "", "-n")
    assert ok(dry), dry[-4000:]
    assert sorted(set(re.findall(r"shard=(\S+)", dry))) == SHARDS
    assert by_kind(rec.take()) == {"LIST": 2}, "the dry-run lists the corpus and the output, nothing else"

    # First run: completes; one SLURM job per shard, each encode job once; each token file sent once.
    t0 = time.monotonic()
    first = run(env, server.endpoint, work, random_ckpt, "", *TEST_OVERRIDES)
    wall = time.monotonic() - t0
    requests = rec.take()
    assert ok(first), first[-6000:]
    jobs = encode_jobs(env, seen)
    assert len(jobs) == 3, f"one encode job per shard: {jobs}\n{first[-3000:]}"
    data = keys(client, "data")
    out = keys(client, "out")
    for shard in SHARDS:
        assert f"data/{shard}/{TOKENS}" in data
        assert puts_of(requests, f"data/{shard}/{TOKENS}") == 1, f"{shard}: its token file was sent more than once"
        assert f"out/shards/{shard}.json" in out
        assert f"out/sft_dataset/data/train/{shard}.parquet" in out
    assert {"out/stats.json", "out/shards.parquet", "out/sft_dataset/README.md", "out/sft_dataset/index.json"} <= set(
        out
    )
    stats = json.loads(client.get_object(Bucket=BUCKET, Key="out/stats.json")["Body"].read())
    assert stats["shards"] == 3 and stats["encoded"] == 6, stats
    assert scratch_dirs(jobs) == [], "the cluster jobs left their node-local copies"
    kinds = by_kind(requests)
    per_shard = len(requests) / len(SHARDS)
    print(f"\nfirst run: {wall:.1f} s, {len(requests)} requests ({per_shard:.1f} a shard): {kinds}")
    print(f"stages (from the first job's start): {stage_times(first)}")
    assert per_shard <= 25, kinds
    first_tokens = {s: tokens_of(client, f"data/{s}/{TOKENS}") for s in SHARDS}
    print_job_start_up(env, work, jobs)

    # Nothing left to do.
    dry = run(env, server.endpoint, work, random_ckpt, "", "-n")
    assert ok(dry) and "Nothing to be done" in dry, dry[-3000:]
    rec.take()

    # One token object deleted: the rerun encodes exactly that shard, in one job.
    client.delete_object(Bucket=BUCKET, Key=f"data/{SHARDS[1]}/{TOKENS}")
    dry = run(env, server.endpoint, work, random_ckpt, "", "-n")
    assert re.search(r"^encode_shard\s+1\s*$", dry, re.M) and f"shard={SHARDS[1]}" in dry, dry[-3000:]
    seen = set(slurm_jobs(env))
    again = run(env, server.endpoint, work, random_ckpt, "", *TEST_OVERRIDES)
    assert ok(again), again[-6000:]
    assert len(encode_jobs(env, seen)) == 1
    assert tokens_of(client, f"data/{SHARDS[1]}/{TOKENS}") == first_tokens[SHARDS[1]]
    rec.take()

    # Two deleted, packed two shards per cluster job: one job for both.
    for shard in (SHARDS[0], SHARDS[2]):
        client.delete_object(Bucket=BUCKET, Key=f"data/{shard}/{TOKENS}")
    seen = set(slurm_jobs(env))
    packed = run(env, server.endpoint, work, random_ckpt, "", *TEST_OVERRIDES, "--group-components", "encode=2")
    requests = rec.take()
    assert ok(packed), packed[-6000:]
    jobs = encode_jobs(env, seen)
    assert len(jobs) == 1, f"two shards, one group job: {jobs}"
    for shard in (SHARDS[0], SHARDS[2]):
        assert puts_of(requests, f"data/{shard}/{TOKENS}") == 1
        assert tokens_of(client, f"data/{shard}/{TOKENS}") == first_tokens[shard]
    assert scratch_dirs(jobs) == []
    dry = run(env, server.endpoint, work, random_ckpt, "", "-n")
    assert ok(dry) and "Nothing to be done" in dry, dry[-3000:]


def test_job_cancelled_while_it_sends_a_multipart_upload(cluster, s3, random_ckpt, tmp_path):  # noqa: F811
    """scancel of the encode job while its token file's multipart upload is under way: no object under the real
    key; the plain rerun aborts the open upload and completes."""
    server, client, rec = s3
    env = {**cluster, "NEUCODEC_S3_MULTIPART_BYTES": "1000"}  # every token file goes as a multipart upload
    prefix, shard = "killed", "a/shard-0"
    for name in ("audio.tar", "metadata.parquet"):
        client.copy_object(
            Bucket=BUCKET,
            Key=f"{prefix}/data/{shard}/{name}",
            CopySource={"Bucket": BUCKET, "Key": f"data/{shard}/{name}"},
        )
    token_key = f"{prefix}/data/{shard}/{TOKENS}"
    work = tmp_path / "work"
    work.mkdir()
    seen = set(slurm_jobs(env))
    rec.hold(lambda method, key, query: key == token_key and method == "PUT" and "partNumber" in query)
    result: dict[str, str] = {}
    runner = threading.Thread(
        target=lambda: result.update(out=run(env, server.endpoint, work, random_ckpt, prefix, *TEST_OVERRIDES))
    )
    runner.start()
    try:
        assert rec.held.wait(timeout=RUN_TIMEOUT_S), "the token file's upload never began"
        jobs = encode_jobs(env, seen)
        assert len(jobs) == 1, jobs
        subprocess.run(["scancel", str(jobs[0])], env=env, check=True, timeout=30)
        time.sleep(5)  # SIGTERM, then SIGKILL after KillWait: the job's processes are gone
    finally:
        rec.release()
        runner.join(timeout=RUN_TIMEOUT_S)
    assert not ok(result["out"]), "the cancelled job should fail the run"
    assert token_key not in keys(client, f"{prefix}/data"), "a partial token file under the real key"
    open_uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", [])
    assert [u["Key"] for u in open_uploads] == [token_key], open_uploads

    rerun = run(env, server.endpoint, work, random_ckpt, prefix, *TEST_OVERRIDES)
    assert ok(rerun), rerun[-6000:]
    assert "aborted 1 unfinished upload" in rerun
    assert client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", []) == []
    assert tokens_of(client, token_key) == tokens_of(client, f"data/{shard}/{TOKENS}")
    assert scratch_dirs(encode_jobs(env, seen)) == []


def test_cluster_run_through_faults(cluster, s3, random_ckpt, tmp_path):  # noqa: F811
    """The same run with 5 % of requests failing (throttling, 500, resets, delays): completes, same tokens."""
    from support.fault_proxy import FaultProxy

    server, client, rec = s3
    work = tmp_path / "work"
    work.mkdir()
    with FaultProxy(server.endpoint, rate=0.05, seed=7) as proxy:
        out = run(cluster, proxy.endpoint, work, random_ckpt, "faults", *TEST_OVERRIDES)
        counts = proxy.counts()
    print(f"\nthrough faults: {counts}")
    assert ok(out), out[-6000:]
    assert counts["total_faults"] > 0, counts
    for shard in SHARDS:
        assert tokens_of(client, f"faults/data/{shard}/{TOKENS}") == tokens_of(client, f"data/{shard}/{TOKENS}")
    assert json.loads(client.get_object(Bucket=BUCKET, Key="faults/out/stats.json")["Body"].read())["encoded"] == 6
