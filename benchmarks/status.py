"""``neucodec-workflow status`` at corpus scale: requests and wall time of a cold look, a refresh, and a refresh after
new token files.

    .venv/bin/python benchmarks/status.py                  # --shards 5000, S3 and local
    .venv/bin/python benchmarks/status.py --shards 500 --only s3

Corpus (benchmarks/record.py's layout, ``part-NN/shard-NNNNN``): 80 % of the shards with a token file written by the
workflow (``contract.write_tokens``: 30 rows in 15 row groups, provenance, and a report as ``encode_shard`` makes it:
rejects with details, an audit, device), 18 % foreign token files (record.py's ``foreign_shard``), 2 % pending (no
token file), one of them failed (its encode log ends with the job's failure line). In S3: a counting moto server on
127.0.0.1 (fake keys), ``s3://status-bench/corpus``; locally: a temporary directory. Each look is the installed
console command ``neucodec-workflow status --json`` in a new process (start-up, imports and config included), from a
working directory of its own (its footer cache in ``.snakemake/``):

0. cold, before any summary: no footer cache, no ``{output}/shards.parquet`` (every token file's footer is read: one
   ranged GET each in S3); ``--skip-footer-look`` leaves it out;
then ``{output}/shards.parquet`` is made by the workflow's own jobs: ``jobs.derive_job`` (the entry point of rules
derive_shard / derive_batch_N) over every token file in batches of 100, two processes, reading the token files and
metadata from where the corpus is (S3: GETs, each token file's LastModified from its GET), then ``jobs.summarize_job``
(rule summarize's); in S3 it is uploaded to ``s3://status-bench/out/shards.parquet`` (output beside the corpus, not
inside its listing), locally it is written in the output directory (setup, not measured); then, in a new directory:
1. cold: no footer cache (the done token files' rows of shards.parquet instead of their footers);
2. refresh: nothing changed;
3. refresh after ``--new`` pending shards got their token file (not in shards.parquet: their footers).

A markdown report on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from record import foreign_shard, shard_name  # benchmarks/record.py, beside this script
from s3_requests import env_for

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support/: the loopback S3 server
BUCKET = "status-bench"
S3_OUTPUT = f"s3://{BUCKET}/out"
LOCAL_OUTPUT = "local"  # a local output, relative to the look's working directory: logs and shards.parquet there
DERIVE_BATCH = 100  # shards per derive job, as the workflow's derive_batch_N
DEVICES = ["cuda:0 (NVIDIA H200)", "cuda:1 (NVIDIA H200)", "cuda:0 (NVIDIA A100-SXM4-80GB)"]


def kind(i: int) -> str:
    """workflow (80 %), foreign (18 %), pending (2 %: every 50th shard)."""
    if i % 50 == 7:
        return "pending"
    return "foreign" if i % 5 == 3 else "workflow"


def workflow_tokens(i: int) -> bytes:
    """A token file as the encode job writes it: provenance, 15 row groups, the report in the key-value metadata."""
    import numpy as np

    from neucodec_workflow.record.contract import write_tokens
    from neucodec_workflow.record.records import Audit, Reason, Reject, ShardReport

    rng = np.random.default_rng(i)
    rows = [(f"seg{i:05d}_{j:03d}", rng.integers(0, 1 << 16, 200, dtype=np.uint16)) for j in range(30)]
    report = ShardReport(shard=shard_name(i), segments_in_metadata=32, segments_in_tar=31, encoded=30)
    report.rejected = [
        Reject(f"seg{i:05d}_{j:03d}", Reason.DECODE_ERROR, "LibsndfileError: Error : unknown", f"a/{j}.flac")
        for j in range(30, 32)
    ] + [Reject(f"seg{i:05d}_x", Reason.MISSING_FROM_TAR, "id in metadata.parquet, no FLAC member in audio.tar")]
    report.audio_seconds = 100_000.0  # ~27.8 h, the seed corpus' mean shard
    report.tokens = int(report.audio_seconds * 50)
    report.wall_seconds = 2500.0 + i % 100
    report.device = DEVICES[i % len(DEVICES)]
    report.codec = {"codec_id": "neuphonic/neucodec", "random_weights": False, "mode": "exact"}
    report.audit = Audit()
    for j in range(4):
        report.audit.add(f"seg{i:05d}_{j:03d}", rows[j][1], rows[j][1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        write_tokens(path, rows, report.codec, report=report.as_dict, rows_per_group=2)
        return path.read_bytes()


def shard_files(i: int) -> dict[str, bytes]:
    files = foreign_shard(i)  # metadata.parquet, a 1 KiB tar, a foreign token file
    k = kind(i)
    if k == "pending":
        del files["neucodec_tokens.parquet"]
    elif k == "workflow":
        files["neucodec_tokens.parquet"] = workflow_tokens(i)
    return files


def failed_log(work: Path, shard: str) -> None:
    """The failed shard's encode log, written by the job's own logging (jobs.setup_logging) in a process of its own."""
    path = work / "local" / "logs" / "encode" / f"{shard}.log"
    prog = (
        "import sys; from neucodec_workflow.workflow.job_log import setup_logging; setup_logging(sys.argv[1])\n"
        "from neucodec_workflow.shard.audio import ShardError; raise ShardError(sys.argv[2], 'cannot read audio.tar')"
    )
    subprocess.run([sys.executable, "-c", prog, str(path), shard], capture_output=True, timeout=120)
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # an hour ago: not running


def look(work: Path, corpus: str, output: str, env: dict[str, str], server: Any = None) -> dict[str, Any]:
    """One ``neucodec-workflow status --json`` in a new process; its wall time, its JSON and the requests it sent."""
    exe = Path(sys.executable).with_name("neucodec-workflow")
    cmd = [str(exe), "status", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config/config.yaml")]
    cmd += ["--config", f"corpus={corpus}", f"output={output}", "local_dir=local", "--json"]
    if server is not None:
        server.reset()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"status failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the command's own CPU, not moto's
    requests = server.counts() if server is not None else None
    return {"wall_s": wall, "cpu_s": cpu, "status": out, "requests": requests, "stderr": proc.stderr.splitlines()}


def expected(n: int, new: int) -> dict[str, int]:
    kinds = [kind(i) for i in range(n)]
    return {
        "shards": n,
        "done": n - kinds.count("pending") + new,
        "pending": kinds.count("pending") - 1 - new,
        "failed": 1,
        "foreign": kinds.count("foreign"),
    }


def make_summary(n: int, corpus: str, out: Path, env: dict[str, str]) -> tuple[Path, float]:
    """``out/shards.parquet`` as the workflow makes it: ``jobs.derive_job`` (rules derive_shard / derive_batch_N) over
    every shard with a token file, in batches of 100 in two processes, the token files and metadata read from
    ``corpus`` (S3: one GET each; the token file's LastModified from its GET), then ``jobs.summarize_job`` (rule
    summarize) over the reports. Returns the table's path and the seconds it took (setup, not measured)."""
    from neucodec_workflow.commands.footers import SUMMARY
    from neucodec_workflow.commands.status import load_config
    from neucodec_workflow.dataset import formats
    from neucodec_workflow.workflow.dataset_jobs import derive_job, summarize_job

    config = load_config(REPO, overrides=[f"corpus={corpus}", f"output={out}"], snakefile=REPO / "Snakefile")
    sft, splits = config["sft"], ["train"]
    part_keys = [(fmt, split) for fmt in sft["formats"] for split in splits]
    shards = [shard_name(i) for i in range(n) if kind(i) != "pending"]
    reports = [str(out / "shards" / f"{s}.json") for s in shards]

    def job(batch: list[str]) -> dict[str, Any]:
        tokens = [f"{corpus}/{s}/neucodec_tokens.parquet" for s in batch]
        return {
            "shards": batch,
            "tokens": tokens,
            "local_tokens": [str(out / "no-local-copy") for _ in batch],  # none: every token file read from corpus
            "metadata": [f"{corpus}/{s}/metadata.parquet" for s in batch],
            "reports": [str(out / "shards" / f"{s}.json") for s in batch],
            "parts": [str(out / formats.ROOTS[f] / formats.part_path(f, x, s)) for s in batch for f, x in part_keys],
            "part_keys": part_keys,
            "columns": config["columns"],
            "sft": sft,
        }

    t0 = time.perf_counter()
    saved = dict(os.environ)
    os.environ.update(env)  # the S3 endpoint and keys, for the derive processes (S3Settings.from_env)
    try:
        with ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn"), initializer=logging.disable, initargs=(logging.WARNING,)
        ) as pool:
            batches = [shards[i : i + DERIVE_BATCH] for i in range(0, len(shards), DERIVE_BATCH)]
            for f in [pool.submit(derive_job, **job(b)) for b in batches]:
                f.result()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    outputs = {"stats": str(out / "stats.json"), "shards": str(out / SUMMARY)}
    for fmt in sft["formats"]:
        for name, path in formats.summary_files(fmt, splits).items():
            outputs[f"{fmt}_{name}"] = str(out / formats.ROOTS[fmt] / path)
    logging.disable(logging.WARNING)
    summarize_job(reports=reports, outputs=outputs, sft=sft)
    logging.disable(logging.NOTSET)
    return out / SUMMARY, time.perf_counter() - t0


def scenario(
    name: str,
    n: int,
    new: list[int],
    put: Any,
    corpus: str,
    output: str,
    summarize: Any,
    env: dict[str, str],
    work: Path,
    server: Any = None,
    footer_look: bool = True,
) -> list[dict[str, Any]]:
    """The looks (see the module's doc); ``summarize()`` makes shards.parquet and puts it where ``output`` says."""
    pending = [i for i in range(n) if kind(i) == "pending"]
    rows = []

    def measure(what: str, where: Path, added: int, cost: dict[str, int]) -> None:
        """One look; its counts and ``cost`` (footers read, from shards.parquet) checked against what they must be."""
        r = look(where, corpus, output, env, server)
        want = expected(n, added)
        got = {k: r["status"][k] for k in want}
        check = got == want and all(r["status"]["cost"][k] == v for k, v in cost.items())
        rows.append({"where": name, "what": what, **r, "check": check, "got": got, "want": want})
        print(f"[{name} {what}: {r['wall_s']:.1f} s]", file=sys.stderr)

    if footer_look:
        before = work.with_name(f"{work.name}-footers")
        before.mkdir()
        failed_log(before, shard_name(pending[0]))
        measure("0. cold, no shards.parquet (footers)", before, 0, {"footers_from_summary": 0})
    seconds, size = summarize()
    print(
        f"[{name}: shards.parquet ({size} bytes) made by derive_job + summarize_job in {seconds:.0f} s]",
        file=sys.stderr,
    )
    failed_log(work, shard_name(pending[0]))
    done = expected(n, 0)["done"]
    looks = (
        ("1. cold (no footer cache)", 0, {"footers_read": 0, "footers_from_summary": done}),
        ("2. refresh, nothing changed", 0, {"footers_read": 0, "footers_cached": done}),
        (f"3. refresh after {len(new)} new token files", len(new), {"footers_read": len(new), "footers_cached": done}),
    )
    for what, added, cost in looks:
        for i in new if added else ():
            put(i, "neucodec_tokens.parquet", workflow_tokens(i))
        measure(what, work, added, cost)
    return rows


def run_s3(n: int, new: int, tmp: Path, footer_look: bool = True) -> list[dict[str, Any]]:
    from support.loopback_s3 import LoopbackS3

    from neucodec_workflow.storage.s3 import S3Settings

    with LoopbackS3() as server:
        client = S3Settings(endpoint_url=server.endpoint, access_key="AKIABENCH", secret_key="bench-secret").client()
        client.create_bucket(Bucket=BUCKET)

        def put(i: int, name: str, body: bytes) -> None:
            client.put_object(Bucket=BUCKET, Key=f"corpus/{shard_name(i)}/{name}", Body=body)

        def put_shard(i: int) -> None:
            files = shard_files(i)
            for name in ("audio.tar", "metadata.parquet", "neucodec_tokens.parquet"):  # token file last: newest
                if name in files:
                    put(i, name, files[name])

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put_shard, range(n)))
        print(f"[S3 corpus of {n} shards uploaded in {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
        time.sleep(1.1)  # S3 times have a resolution of 1 s: new token files must be newer than their tars
        pending = [i for i in range(n) if kind(i) == "pending"]
        work = tmp / "s3"
        work.mkdir()
        corpus, env = f"s3://{BUCKET}/corpus", env_for(server.endpoint)

        def summarize() -> tuple[float, int]:
            path, seconds = make_summary(n, corpus, tmp / "s3-derived", env)
            client.put_object(Bucket=BUCKET, Key=f"{S3_OUTPUT.split('/', 3)[3]}/shards.parquet", Body=path.read_bytes())
            return seconds, path.stat().st_size

        return scenario(
            "S3", n, pending[1 : 1 + new], put, corpus, S3_OUTPUT, summarize, env, work, server, footer_look
        )


def run_local(n: int, new: int, tmp: Path, footer_look: bool = True) -> list[dict[str, Any]]:
    root = tmp / "local-corpus"

    def put(i: int, name: str, body: bytes) -> None:
        path = root / shard_name(i) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: [put(i, k, v) for k, v in shard_files(i).items()], range(n)))
    print(f"[local corpus of {n} shards written in {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    time.sleep(0.1)
    pending = [i for i in range(n) if kind(i) == "pending"]
    work = tmp / "local"
    work.mkdir()

    def summarize() -> tuple[float, int]:
        path, seconds = make_summary(n, str(root), work / LOCAL_OUTPUT, {})
        return seconds, path.stat().st_size

    return scenario(
        "local",
        n,
        pending[1 : 1 + new],
        put,
        str(root),
        LOCAL_OUTPUT,
        summarize,
        dict(os.environ),
        work,
        None,
        footer_look,
    )


def report(rows: list[dict[str, Any]], argv: list[str]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    print(
        f"# neucodec-workflow status at scale ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, commit {commit.stdout.strip()})\n"
    )
    print(f"`.venv/bin/python {' '.join(['benchmarks/status.py', *argv])}`\n")
    print(
        "| corpus | look | wall s (whole command) | of it in status() | CPU s of the command | requests | LIST "
        "| shards.parquet GET | footer GETs | footers read | from shards.parquet | cached | counts as expected |"
        "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        c, req = r["status"]["cost"], r["requests"]
        total = req["total"] if req else "-"
        print(
            f"| {r['where']} | {r['what']} | {r['wall_s']:.1f} | {c['seconds']:.1f} | {r['cpu_s']:.1f} | {total} "
            f"| {c['list_requests']} | {c['summary_requests']} ({c['summary']}) "
            f"| {c['footer_requests']} | {c['footers_read']} | {c['footers_from_summary']} | {c['footers_cached']} "
            f"| {r['check']} {r['got']} |"
        )
    noise = {f"{r['where']} {r['what'][:2]}": len(r["stderr"]) for r in rows}
    print(f"\nLines the command wrote on stderr: {noise}")
    loads = os.getloadavg()
    print(f"\nLoad average at the end: {loads[0]:.1f} {loads[1]:.1f} {loads[2]:.1f} (other work stretches wall times)")
    last = rows[-1]["status"]
    print("\nThe last look's status (human view of the same object):\n\n```")
    from neucodec_workflow.commands.status import render

    print(render(last))
    print("```")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--new", type=int, default=10, help="pending shards that get a token file before look 3")
    ap.add_argument("--only", choices=["s3", "local"], nargs="*", default=["s3", "local"])
    ap.add_argument("--skip-footer-look", action="store_true", help="no look before shards.parquet is made")
    opts = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if not Path(sys.executable).with_name("neucodec-workflow").exists():
        raise SystemExit("neucodec-workflow is not installed beside this interpreter: pip install --no-deps -e .")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp_s:
        tmp = Path(tmp_s)
        if "s3" in opts.only:
            rows += run_s3(opts.shards, opts.new, tmp, not opts.skip_footer_look)
        if "local" in opts.only:
            rows += run_local(opts.shards, opts.new, tmp, not opts.skip_footer_look)
    report(rows, argv)
    return 0 if all(r["check"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
