"""S3 requests, wall time and local disk of the workflow against a counting moto server on 127.0.0.1.

    .venv/bin/python benchmarks/s3_requests.py                 # all measurements, a markdown table on stdout
    .venv/bin/python benchmarks/s3_requests.py --skip-run      # dry-runs only (tiny objects, ~1 min)

1. dry-run over --shards shards (tiny objects) with all but 10 outputs present: requests, wall, pending jobs;
   the same with the stock (unpatched) plugin over --stock-shards shards for comparison;
2. real runs (real model architecture, seeded random weights, CPU) of N new shards for each N in --run-shards:
   requests in total and per shard, and the peak local disk of the plugin's local copies and of the whole work
   directory against the size of one shard's inputs.
Nothing leaves 127.0.0.1; credentials are fake.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support/: the loopback S3 server
BUCKET = "bench"
PENDING = re.compile(r"^\s*wildcards: shard=(\S+)", re.M)


def env_for(endpoint: str, stock: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_"))}
    env.update(
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=endpoint,
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY="AKIABENCH",
        SNAKEMAKE_STORAGE_S3_SECRET_KEY="bench-secret",
        NEUCODEC_S3_REQUIRE_ENDPOINT="1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    if stock:
        env["NEUCODEC_S3_STOCK_PLUGIN"] = "1"
    return env


def args_for(workdir: Path, prefix: str, weights: str, *extra: str) -> list[str]:
    from support.loopback_s3 import snakemake_s3_command

    return snakemake_s3_command(REPO, workdir, f"s3://{BUCKET}/{prefix}", weights, *extra)


def tiny_bucket(client: Any, prefix: str, n: int, pending: set[int], out: Path) -> list[str]:
    """n shards of 1-byte objects; tokens + local report for every shard not in ``pending``."""
    from concurrent.futures import ThreadPoolExecutor

    shards = [f"part-{i // 1000:02d}/shard-{i:05d}" for i in range(n)]

    def put(i: int) -> None:
        names = ["audio.tar", "metadata.parquet"] + ([] if i in pending else ["neucodec_tokens.parquet"])
        for name in names:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shards[i]}/{name}", Body=b"x")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    time.sleep(1.1)  # local reports strictly newer than the S3 timestamps of the inputs
    for i in range(n):
        if i not in pending:
            report = out / "shards" / f"{shards[i]}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text("{}")
    return [shards[i] for i in sorted(pending)]


def dry_run(server: Any, client: Any, n: int, stock: bool, tmp: Path) -> dict[str, Any]:
    prefix = f"dry{'-stock' if stock else ''}-{n}"
    workdir = tmp / prefix
    pending = set(range(0, n, max(1, n // 10)))
    expected = tiny_bucket(client, prefix, n, pending, workdir / "out")
    server.reset()
    t = time.perf_counter()
    r = subprocess.run(
        args_for(workdir, prefix, "random", "-n"),
        env=env_for(server.endpoint, stock),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr[-4000:])
    found = sorted(PENDING.findall(r.stdout))
    counts = server.counts()
    return {
        "what": f"dry-run, {n} shards, {n - len(pending)} done" + (" (stock plugin)" if stock else ""),
        "requests": counts["total"],
        "by_method": counts["by_method"],
        "wall_s": wall,
        "pending_ok": found == sorted(expected),
        "pending": len(found),
    }


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def real_run(server: Any, client: Any, n: int, weights: str, tmp: Path) -> dict[str, Any]:
    from support.loopback_s3 import shard_bytes

    prefix = f"run-{n}"
    workdir = tmp / prefix
    sizes = []
    for i in range(n):
        tar, meta = shard_bytes(2, 1.0, seed=i)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/s/shard-{i:03d}/audio.tar", Body=tar)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/s/shard-{i:03d}/metadata.parquet", Body=meta)
        sizes.append(len(tar) + len(meta))
    peaks = {"storage": 0, "workdir": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peaks["storage"] = max(peaks["storage"], dir_bytes(workdir / ".snakemake" / "storage"))
            peaks["workdir"] = max(
                peaks["workdir"],
                dir_bytes(workdir) - dir_bytes(workdir / "out" / "logs") - dir_bytes(workdir / ".snakemake" / "log"),
            )
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    server.reset()
    poller.start()
    t = time.perf_counter()
    r = subprocess.run(
        args_for(workdir, f"{prefix}/s", weights),
        env=env_for(server.endpoint),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - t
    stop.set()
    poller.join()
    if r.returncode:
        raise SystemExit(r.stderr[-4000:])
    counts = server.counts()
    return {
        "what": f"real run, {n} new shards",
        "requests": counts["total"],
        "by_method": counts["by_method"],
        "wall_s": wall,
        "per_shard": counts["total"] / n,
        "peak_storage_bytes": peaks["storage"],
        "peak_workdir_bytes": peaks["workdir"],
        "shard_input_bytes": max(sizes),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--stock-shards", type=int, default=200, help="0 skips the stock-plugin dry-run")
    ap.add_argument("--run-shards", type=int, nargs="*", default=[5, 20])
    ap.add_argument("--skip-run", action="store_true")
    opts = ap.parse_args(argv)

    from support.loopback_s3 import LoopbackS3

    from neucodec_workflow.engine.codec import save_random_checkpoint
    from neucodec_workflow.storage.s3 import S3Settings

    rows = []
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp_s, LoopbackS3() as server:
        tmp = Path(tmp_s)
        client = S3Settings(endpoint_url=server.endpoint, access_key="AKIABENCH", secret_key="bench-secret").client()
        client.create_bucket(Bucket=BUCKET)
        rows.append(dry_run(server, client, opts.shards, False, tmp))
        if opts.stock_shards:
            rows.append(dry_run(server, client, opts.stock_shards, True, tmp))
            rows.append(dry_run(server, client, opts.stock_shards, False, tmp))
        if not opts.skip_run:
            weights = str(save_random_checkpoint(tmp / "random_seed0.pt", seed=0))
            for n in opts.run_shards:
                rows.append(real_run(server, client, n, weights, tmp))

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(
        f"# S3 requests ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, commit {commit})\n"
    )
    print(
        f"`{' '.join(['benchmarks/s3_requests.py', *(argv if argv is not None else sys.argv[1:])])}`; moto server on 127.0.0.1\n"
    )
    print(
        "| measurement | S3 requests | per shard | wall s | pending listed | peak .snakemake/storage | peak work dir | one shard's inputs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = f"{r['per_shard']:.1f}" if "per_shard" in r else ""
        pend = (f"{r['pending']} ({'exact' if r['pending_ok'] else 'WRONG'})") if "pending" in r else ""
        disk = [
            f"{r[k] / 1024:.0f} KiB" if k in r else ""
            for k in ("peak_storage_bytes", "peak_workdir_bytes", "shard_input_bytes")
        ]
        print(f"| {r['what']} | {r['requests']} | {per} | {r['wall_s']:.1f} | {pend} | {' | '.join(disk)} |")
    print("\nRequests by kind:\n")
    for r in rows:
        print(f"- {r['what']}: {r['by_method']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
