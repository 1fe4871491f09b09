"""The token file as the record, on S3: dry-run, adoption of finished shards, one new shard, local disk.

    .venv/bin/python benchmarks/record.py                  # --shards 5000 --base-shards 1000 --probe-shards 500
    .venv/bin/python benchmarks/record.py --shards 500     # quicker

Against a counting moto server on 127.0.0.1 (fake credentials), corpus s3://BUCKET/corpus, output s3://BUCKET/out,
codec weights ``random`` on the CPU, ``--cores 2``, one bucket per run; a markdown report on stdout:
1. dry-run over --shards shards, all but 10 with a (foreign) token file, nothing in the output: pending encode jobs,
   job counts, requests, wall;
2. adoption of --shards finished shards (foreign token files, empty output), the real run: requests per shard, wall,
   jobs; every report and part is checked, stats.json must count every shard;
3. one new real shard (FLAC in a tar) added to --base-shards finished ones whose derived outputs a previous run made:
   jobs, wall without the encode job (its benchmark TSV), the objects written;
4. peak of .snakemake/storage under tests/support/storage_probe.py (every transfer recorded) in run 3 and in
   an adoption of --probe-shards shards (the probe walks the storage directory at each transfer: too slow for run 2
   itself), against the size of two token files plus one dataset part.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3_requests import env_for  # benchmarks/s3_requests.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support/: the loopback S3 server, the storage probe
JOB_STATS = re.compile(r"^Job stats:\n.*\n.*\n((?:\S+\s+\d+\n)+)", re.M)
JOB_START = re.compile(r"^(?:local)?rule (\S+):$")
JOB_FIELD = re.compile(r"^\s+(log|jobid|wildcards): (.*)$")
JOB_END = re.compile(r"^Finished jobid: (\d+) ")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def shard_name(i: int) -> str:
    return f"part-{i // 1000:02d}/shard-{i:05d}"


def foreign_shard(i: int) -> dict[str, bytes]:
    """A shard encoded elsewhere: the contract's three columns only (no key-value metadata), a matching
    metadata.parquet, and an empty tar (never read for a shard with tokens)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neucodec_workflow.record.contract import SCHEMA

    rng = np.random.default_rng(i)
    ids = [f"seg{i:05d}_{j}" for j in range(3)]
    tokens = [rng.integers(0, 1 << 16, int(rng.integers(20, 60)), dtype=np.uint16) for _ in ids]
    table = pa.table(
        [ids, [t.astype("<u2").tobytes() for t in tokens], pa.array([len(t) for t in tokens], pa.int32())],
        schema=SCHEMA,
    )
    meta = pa.table(
        {
            "segment_id": ids,
            "text": [f"text {s}" for s in ids],
            "language": ["en" if i % 2 else "fr"] * 3,
            "speaker": [f"spk{i % 7}"] * 3,
            "duration": [len(t) * 0.02 for t in tokens],
            "dataset": ["foreign"] * 3,
        }
    )
    out = {"audio.tar": bytes(1024)}  # two zero blocks: a valid, empty tar
    for name, t in (("metadata.parquet", meta), ("neucodec_tokens.parquet", table)):
        buf = io.BytesIO()
        pq.write_table(t, buf)
        out[name] = buf.getvalue()
    return out


def put_corpus(client: Any, bucket: str, n: int, without_tokens: frozenset[int] = frozenset()) -> None:
    """Upload n shards with a thread pool (setup, not measured); each token file last, so it is the newest."""
    client.create_bucket(Bucket=bucket)

    def put(i: int) -> None:
        for name, body in foreign_shard(i).items():
            if i not in without_tokens or name != "neucodec_tokens.parquet":
                client.put_object(Bucket=bucket, Key=f"corpus/{shard_name(i)}/{name}", Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(n)))


def objects(client: Any, bucket: str, prefix: str = "") -> dict[str, tuple[str, int]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["Size"]) for p in pages for o in p.get("Contents", [])}


def log_span(path: str | None, t0: float) -> tuple[float, float] | None:
    """First and last timestamp of a job's log, in seconds since the Snakemake process started."""
    stamps = [m.group(1) for m in map(LOG_TIME.match, Path(path).read_text().splitlines()) if m] if path else []
    to_s = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0 for s in stamps]  # local time, as logged
    return (to_s[0], to_s[-1]) if to_s else None


def snakemake(server: Any, bucket: str, work: Path, *extra: str, probe: Path | None = None) -> dict[str, Any]:
    """The real Snakemake CLI (python -m snakemake; with ``probe`` under the storage probe). Counts its requests,
    stamps each line of its output on arrival, and times every job: start, first and last line of its log, end."""
    from support.loopback_s3 import snakemake_s3_command

    cfg = [f"output=s3://{bucket}/out", f"local_dir={work / 'local'}"]  # after the command's own --config: they win
    cmd = snakemake_s3_command(REPO, work, f"s3://{bucket}/corpus", "random", *cfg, *extra, probe=probe)
    work.mkdir(parents=True, exist_ok=True)
    server.reset()
    t0 = time.time()
    p = subprocess.Popen(
        cmd, env=env_for(server.endpoint), cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines = [(time.time() - t0, line.rstrip("\n")) for line in p.stdout]  # type: ignore[union-attr]
    rc, wall = p.wait(), time.time() - t0
    text = "\n".join(line for _, line in lines)
    if rc:
        raise SystemExit(f"snakemake failed ({rc}): {' '.join(cmd)}\n{text[-4000:]}")
    jobs: list[dict[str, Any]] = []
    for t, line in lines:
        if m := JOB_START.match(line):
            jobs.append({"rule": m.group(1), "start": t})
        elif (m := JOB_FIELD.match(line)) and jobs and m.group(1) not in jobs[-1]:
            jobs[-1][m.group(1)] = m.group(2)
        elif m := JOB_END.match(line):
            next(j for j in jobs if j.get("jobid") == m.group(1))["end"] = t
    for j in jobs:
        j["log_span"] = log_span(j.get("log"), t0) if "end" in j else None
    stats = JOB_STATS.search(text + "\n")
    counts: Counter[str] = Counter()
    for name, count in (row.split() for row in (stats.group(1).splitlines() if stats else [])):
        counts[re.sub(r"_\d+$", "_N", name)] += int(count)
    load = os.getloadavg()[0]  # other work on the machine stretches the wall times
    return {"wall_s": wall, "jobs": jobs, "job_counts": dict(counts), "requests": server.counts(), "load": load}


def phases(r: dict[str, Any]) -> dict[str, str]:
    """Where the wall time went, per rule (derive_batch_N together): jobs, summed job time, per job mean start-up
    (job start to first log line), work (first to last log line) and after (last log line to Snakemake's end of
    job: upload of the outputs, bookkeeping)."""
    out = {"until first job": f"{r['jobs'][0]['start']:.1f} s"}
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for j in r["jobs"]:
        if "end" in j and j["rule"] != "all":
            by_rule.setdefault(re.sub(r"_\d+$", "_N", j["rule"]), []).append(j)
    for rule, js in by_rule.items():
        parts = [(a - j["start"], b - a, j["end"] - b) for j in js if j["log_span"] for a, b in [j["log_span"]]]
        mean = [sum(x) / len(parts) for x in zip(*parts, strict=True)]
        out[rule] = f"{len(js)} job(s), {sum(j['end'] - j['start'] for j in js):.1f} s in all" + (
            f"; per job: start-up {mean[0]:.1f} s, work {mean[1]:.1f} s, after {mean[2]:.1f} s" if mean else ""
        )
    return out


def summarize_reading(work: Path) -> str:
    """How summarize read the reports (its log line: from digests, one by one, requests)."""
    lines = (work / "local" / "logs" / "summarize.log").read_text().splitlines()
    return next((line.split(": ", 1)[-1] for line in lines if "shard reports:" in line), "?")


def probe_peak(probe: Path, client: Any, bucket: str) -> dict[str, Any]:
    from support.storage_probe import read

    ops = read(probe)
    top = max(ops, key=lambda o: o["storage_bytes"])
    kinds = Counter(
        "report" if "/out/shards/" in f else "part" if "/sft_dataset/data/" in f else f.rsplit("/", 1)[-1]
        for f in top["storage_files"]
    )
    sizes = objects(client, bucket)
    tokens = max(s for k, (_, s) in sizes.items() if k.endswith("neucodec_tokens.parquet"))
    part = max(s for k, (_, s) in sizes.items() if k.startswith("out/sft_dataset/data/"))
    return {
        "peak_bytes": top["storage_bytes"],
        "peak_files": dict(kinds),
        "reference_bytes": 2 * tokens + part,
        "downloads": sum(o["op"] == "retrieve" for o in ops),
        "uploads": sum(o["op"] == "store" for o in ops),
        "job_uploads": sum(o["op"] == "job_store" for o in ops),
    }


def dry_run(server: Any, client: Any, n: int, tmp: Path) -> dict[str, Any]:
    bucket, pending = "record-dry", frozenset(range(0, n, max(1, n // 10)))
    put_corpus(client, bucket, n, without_tokens=pending)
    r = snakemake(server, bucket, tmp / "dry", "-n")
    encodes = sorted(j["wildcards"].removeprefix("shard=") for j in r["jobs"] if j["rule"] == "encode_shard")
    ok = encodes == sorted(shard_name(i) for i in pending)
    return {"what": f"1. dry-run, {n} shards, {n - len(pending)} with token files, empty output", **r} | {
        "check": f"encode jobs are exactly the {len(pending)} shards without tokens: {ok}"
    }


def adopt(server: Any, client: Any, n: int, tmp: Path, probe: bool = False) -> dict[str, Any]:
    bucket = f"record-adopt-{n}" + ("-probe" if probe else "")
    put_corpus(client, bucket, n)
    r = snakemake(server, bucket, tmp / bucket, probe=tmp / f"{bucket}.jsonl" if probe else None)
    out = set(objects(client, bucket, "out/"))
    want = {f"out/shards/{shard_name(i)}.json" for i in range(n)} | {"out/sft_dataset/README.md"}
    want |= {f"out/sft_dataset/data/train/{shard_name(i)}.parquet" for i in range(n)} | {"out/sft_dataset/index.json"}
    stats = json.loads(client.get_object(Bucket=bucket, Key="out/stats.json")["Body"].read())
    return {
        "what": f"{'4' if probe else '2'}. adopt {n} finished shards (foreign token files), empty output",
        "per_shard": r["requests"]["total"] / n,
        "check": f"every report, part, card, index present: {want <= out}; stats.json shards: {stats['shards']}; "
        f"summarize {summarize_reading(tmp / bucket)}",
        **(probe_peak(tmp / f"{bucket}.jsonl", client, bucket) if probe else {}),
        **r,
    }


def add_one(server: Any, client: Any, base: int, tmp: Path) -> dict[str, Any]:
    from support.loopback_s3 import shard_bytes

    bucket, work, new = "record-add", tmp / "add", "part-new/shard-new"
    put_corpus(client, bucket, base)
    snakemake(server, bucket, work)  # the previous run: every derived output made
    tar, meta = shard_bytes(2, 1.0, seed=base)  # 2 clips of 1 s: real FLAC in a real tar
    client.put_object(Bucket=bucket, Key=f"corpus/{new}/audio.tar", Body=tar)
    client.put_object(Bucket=bucket, Key=f"corpus/{new}/metadata.parquet", Body=meta)
    before = objects(client, bucket)
    r = snakemake(server, bucket, work, probe=tmp / "add.jsonl")
    after = objects(client, bucket)
    tsv = (work / "local" / "benchmarks" / "encode" / f"{new}.tsv").read_text().splitlines()
    encode_s = float(tsv[1].split("\t")[0])
    return {
        "what": f"3. one new shard added to {base} finished ones (derived outputs present)",
        "check": f"encode job {encode_s:.1f} s (benchmark TSV); wall without it {r['wall_s'] - encode_s:.1f} s; "
        f"summarize {summarize_reading(work)}",
        "written": sorted(k for k in after if before.get(k) != after[k]),
        "deleted": sorted(set(before) - set(after)),
        **probe_peak(tmp / "add.jsonl", client, bucket),
        **r,
    }


def report(rows: list[dict[str, Any]], argv: list[str]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    print(
        f"# Token file as the record, on S3 ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, commit {commit.stdout.strip()})\n"
    )
    print(f"`.venv/bin/python {' '.join(['benchmarks/record.py', *argv])}`; moto server on 127.0.0.1\n")
    print("| run | jobs | S3 requests | per shard | wall s | check |\n|---|---|---|---|---|---|")
    for r in rows:
        jobs = ", ".join(f"{k} {v}" for k, v in sorted(r["job_counts"].items()) if k not in ("all", "total"))
        per = f"{r['per_shard']:.3f}" if "per_shard" in r else ""
        print(f"| {r['what']} | {jobs} | {r['requests']['total']} | {per} | {r['wall_s']:.1f} | {r['check']} |")
    print("\nRequests by kind:\n")
    print("\n".join(f"- {r['what'][:2]} {r['requests']['by_method']}" for r in rows))
    print(
        "\nWhere the time went (job log timestamps; 'after': upload of the job's outputs and Snakemake's bookkeeping):"
    )
    for r in rows:
        print(
            f"\n- {r['what'][:2]} "
            + "; ".join(f"{k}: {v}" for k, v in phases(r).items())
            + f"; wall {r['wall_s']:.1f} s; load average at the end {r['load']:.1f}"
        )
    print("\n4. Peak of .snakemake/storage (storage probe: sizes at every transfer):\n")
    print(
        "| run | peak | files at the peak | 2 token files + 1 part | downloads | uploads by Snakemake | by the jobs |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in (r for r in rows if "peak_bytes" in r):
        print(
            f"| {r['what'][:2]} | {r['peak_bytes'] / 1024:.1f} KiB | {r['peak_files']} "
            f"| {r['reference_bytes'] / 1024:.1f} KiB | {r['downloads']} | {r['uploads']} | {r['job_uploads']} |"
        )
    for r in (r for r in rows if "written" in r):
        print("\n3. Objects new or changed in the bucket after the run:\n")
        print("\n".join(f"- `{k}`" for k in r["written"]) + f"\n\nObjects gone: {r['deleted'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=5000, help="shards of runs 1 and 2")
    ap.add_argument("--base-shards", type=int, default=1000, help="finished shards of run 3")
    ap.add_argument("--probe-shards", type=int, default=500, help="shards of the adoption under the storage probe")
    ap.add_argument("--only", type=int, nargs="*", default=[1, 2, 3, 4], help="which runs")
    ap.add_argument("--keep", type=Path, help="work in this (new) directory and keep it, not in a temporary one")
    opts = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    from support.loopback_s3 import LoopbackS3

    from neucodec_workflow.storage.s3 import S3Settings

    runs = {
        1: lambda: dry_run(server, client, opts.shards, tmp),
        2: lambda: adopt(server, client, opts.shards, tmp),
        3: lambda: add_one(server, client, opts.base_shards, tmp),
        4: lambda: adopt(server, client, opts.probe_shards, tmp, probe=True),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="record-") as tmp_s, LoopbackS3() as server:
        tmp = opts.keep.resolve() if opts.keep else Path(tmp_s)
        client = S3Settings(endpoint_url=server.endpoint, access_key="AKIABENCH", secret_key="bench-secret").client()
        for k in opts.only:
            rows.append(runs[k]())
            print(f"[{rows[-1]['what']}: {rows[-1]['wall_s']:.1f} s]", file=sys.stderr)
    report(rows, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
