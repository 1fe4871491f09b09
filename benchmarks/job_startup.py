"""What a cluster job's own Snakemake process costs before its encode job starts, with a big corpus in the bucket.

    .venv/bin/python benchmarks/job_startup.py                       # --shards 5000, this checkout
    .venv/bin/python benchmarks/job_startup.py --old /path/to/clone  # the same, A/B against another checkout

A SLURM encode job runs Snakemake twice (the job script, then `srun` inside it), each parsing the workflow with the
job's `--target-jobs` and `--mode remote`. This runs that command line as a dry-run (`-n`: the parse and the DAG of the
one job, nothing encoded) against a counting moto server on 127.0.0.1 holding --shards finished shards plus the one
to encode (foreign token files, as in benchmarks/record.py), and prints one JSON line per checkout: wall seconds and
requests by kind, the median of --repeat runs, alternating between the checkouts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import put_corpus, shard_name  # benchmarks/record.py, beside this script
from s3_requests import env_for

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support/: the loopback S3 server


def job_process(repo: Path, endpoint: str, bucket: str, work: Path, shard: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(repo / "config/config.yaml"),
        "--config",
        f"corpus=s3://{bucket}/corpus",
        f"output=s3://{bucket}/out",
        "codec={'weights': 'random', 'device': 'cpu'}",
        "--target-jobs",
        f"encode_shard:shard={shard}",
        "--allowed-rules",
        "encode_shard",
        "--mode",
        "remote",
        "--cores",
        "1",
        "-n",
    ]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env_for(endpoint), cwd=work, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    if proc.returncode or f"shard={shard}" not in proc.stdout + proc.stderr:
        raise SystemExit(f"the job process failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old", type=Path, help="another checkout to compare with (A/B, alternating)")
    args = ap.parse_args(argv)

    from support.loopback_s3 import LoopbackS3

    from neucodec_workflow.storage.s3 import S3Settings

    trees = {"this": REPO, **({"old": args.old.resolve()} if args.old else {})}
    with LoopbackS3() as server, tempfile.TemporaryDirectory() as tmp:
        client = S3Settings(
            endpoint_url=server.endpoint, region="us-east-1", access_key="AKIABENCH", secret_key="bench-secret"
        ).client()
        bucket = "jobs"
        put_corpus(client, bucket, args.shards + 1, without_tokens=frozenset({args.shards}))
        shard = shard_name(args.shards)
        results: dict[str, list[tuple[float, dict[str, int]]]] = {name: [] for name in trees}
        for i in range(args.repeat):
            for name, repo in trees.items():
                server.reset()
                wall = job_process(repo, server.endpoint, bucket, Path(tmp) / f"{name}-{i}", shard)
                results[name].append((wall, server.counts()["by_method"]))
        for name, runs in results.items():
            walls = [w for w, _ in runs]
            print(
                json.dumps(
                    {
                        "checkout": name,
                        "shards_in_bucket": args.shards + 1,
                        "wall_s_median": round(statistics.median(walls), 2),
                        "wall_s": [round(w, 2) for w in walls],
                        "requests": runs[-1][1],
                        "load": round(os.getloadavg()[0], 1),
                    }
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
