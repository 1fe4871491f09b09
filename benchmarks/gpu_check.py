"""The GPU check's steps, each a subprocess with a time limit; results as JSON lines in one file.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--segments N] [--out DIR] [--budget SECONDS]

Run through ``benchmarks/gpu_check.sh`` (which installs the carried wheels first). Steps, in order:

- ``env``: device, driver, versions;
- ``gpu_tests``: ``pytest -m gpu`` (exact == ``encode_code`` on the device, no waits per clip, fast agreement);
- ``variants``: ``benchmarks/variants.py``: exact and fast mode with the stock activations and the device's fused
  kernel, against one reference (speed and token agreement of each);
- ``bench_exact`` / ``bench_fast``: ``benchmarks/encoder.py`` on ``--segments`` segments of 2-20 s (the stock
  reference and the engine end to end from the tar, token agreement over every segment);
- ``shard_job``: one synthetic shard through the workflow's encode job (``snakemake`` on the token file), model
  load included: the number users get per GPU;
- ``profile_exact`` / ``profile_fast``: ``benchmarks/profile_engine.py`` (top kernels, host-device waits, how busy
  the device is).

Seeded random weights are built once (``--weights random``, the default) into a checkpoint that every step
loads, instead of each step building them (~25 s each on the CPU); ``--weights`` takes a Hub id or checkpoint too.

Every step writes one JSON line to ``DIR/gpu_check.jsonl`` (``step``, ``rc``, ``seconds``, the step's own JSON
line, mean device utilisation sampled by ``nvidia-smi`` while it ran) and its output to ``DIR/gpu_check.log``. A
step that fails or runs out of time is recorded and the next one runs. ``--budget`` bounds the whole check.
With ``--device cpu`` and a few segments it is the dry-run the tests make, so the check cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


class Sampler:
    """Device utilisation and memory from ``nvidia-smi`` every half second, on a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if shutil.which("nvidia-smi"):
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self.stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split("\n")[0]
                util, mem = (float(v) for v in out.split(","))
            except (subprocess.SubprocessError, ValueError):
                continue
            self.samples.append((time.time(), util, mem))

    def between(self, t0: float, t1: float) -> dict[str, float]:
        window = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if not window:
            return {}
        return {
            "gpu_util_mean": round(sum(u for u, _ in window) / len(window), 1),
            "gpu_mem_max_mib": max(m for _, m in window),
        }


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


class Check:
    def __init__(self, out: Path, budget: float, python: str, scale: float):
        self.python, self.scale = python, scale  # scale: step time limits (x3 on a CPU)
        self.deadline = time.monotonic() + budget
        self.results = out / "gpu_check.jsonl"
        self.log = out / "gpu_check.log"
        self.sampler = Sampler()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))

    def record(self, entry: dict) -> None:
        with open(self.results, "a") as f:
            f.write(json.dumps(entry) + "\n")
        brief = {k: v for k, v in entry.items() if k not in ("top", "tests")}
        print(json.dumps(brief)[:600], flush=True)

    def step(self, name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict:
        left = self.deadline - time.monotonic()
        if left < 10:
            entry = {"step": name, "rc": None, "skipped": "no time left in the budget"}
            self.record(entry)
            return entry
        timeout = min(limit, left)
        t0, wall0 = time.monotonic(), time.time()
        with open(self.log, "a") as log:
            log.write(f"\n===== {name}: {' '.join(cmd)}\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=env or self.env, capture_output=True, text=True, timeout=timeout
                )
                rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired as exc:
                rc = "timeout"
                stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            log.write(stdout + "\n----- stderr\n" + stderr[-20000:] + "\n")
        entry = {"step": name, "rc": rc, "seconds": round(time.monotonic() - t0, 1), **last_json(stdout)}
        entry["step"] = name
        entry.update(self.sampler.between(wall0, time.time()))
        if rc != 0:
            entry["error_tail"] = (stderr or stdout)[-600:]
        self.record(entry)
        return entry


def env_info(device: str) -> dict:
    import torch

    info = {
        "step": "env",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpus": os.cpu_count(),
        "requested_device": device,
    }
    from importlib.metadata import PackageNotFoundError, version

    for name in ("neucodec", "transformers", "snakemake", "numpy", "pyarrow", "soundfile", "triton"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    if shutil.which("nvidia-smi"):
        q = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    return info


def shard_job(check: Check, args, work: Path) -> dict:
    """One synthetic shard through the workflow's encode job: ``snakemake`` asked for the token file."""
    from encoder import synthetic_shard

    corpus = work / "corpus"
    corpus.mkdir(parents=True)
    synthetic_shard(corpus, args.shard_segments, seed=2, longest=args.longest)
    gpu = args.device.startswith("cuda")
    workers = max(2, min(8, (os.cpu_count() or 2) - 2)) if gpu else 2
    overrides = work / "gpu_check.yaml"  # a config file: nested values given to --config arrive as strings
    overrides.write_text(
        json.dumps(
            {
                "corpus": str(corpus),
                "output": str(work / "out"),
                "codec": {"weights": args.weights, "device": args.device},
                "encode": {"mode": "exact", "batch_seconds": 600 if gpu else 60, "decode_workers": workers},
            }
        )
    )
    cmd = [check.python, "-m", "snakemake", str(corpus / "bench-shard" / "neucodec_tokens.parquet")]
    cmd += ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(work), "--workflow-profile"]
    cmd += [str(ROOT / "profiles" / "default"), "--configfile", str(ROOT / "config" / "config.yaml"), str(overrides)]
    cmd += ["--cores", str(os.cpu_count() or 2), "--resources", "gpu=1", "--set-threads", f"encode_shard={workers}"]
    entry = check.step("shard_job", cmd, limit=240 * check.scale)
    tokens = corpus / "bench-shard" / "neucodec_tokens.parquet"
    if tokens.exists():
        from neucodec_workflow.record.contract import read_report

        report = read_report(tokens) or {}
        job_seconds = entry.get("seconds") or 0
        entry = {
            "step": "shard_job_result",
            "device": report.get("device"),
            "mode": (report.get("codec") or {}).get("mode"),
            "segments": report.get("encoded"),
            "rejected": len(report.get("rejected") or []),
            "audio_seconds": round(report.get("audio_seconds") or 0, 1),
            "encode_wall_seconds": round(report.get("wall_seconds") or 0, 2),
            "x_realtime_in_job": round((report.get("audio_seconds") or 0) / (report.get("wall_seconds") or 1), 1),
            "audit_agreement": (report.get("audit") or {}).get("token_agreement"),
            "snakemake_seconds": job_seconds,
            "x_realtime_snakemake_end_to_end": round((report.get("audio_seconds") or 0) / (job_seconds or 1), 1),
        }
        check.record(entry)
    return entry


def run_steps(check: Check, args, skip: set[str], work: Path) -> None:
    common = ["--device", args.device, "--weights", args.weights, "--longest", str(args.longest)]
    cpu = args.device == "cpu"
    bench = [check.python, "benchmarks/encoder.py", *common, "--segments", str(args.segments)]
    profile = [check.python, "benchmarks/profile_engine.py", *common, "--segments", str(args.profile_segments)]
    variants = [check.python, "benchmarks/variants.py", *common, "--segments", str(args.profile_segments)]
    # the last two swap in stock pieces: where exact mode departs from encode_code on a GPU (encoder.md); a CPU
    # dry-run runs one fast variant: bf16 takes minutes per clip on a CPU without AVX-512 (torch's slow path)
    fast = "fast:torch" if cpu else "fast:torch,fast:auto"
    variants += ["--variants", f"exact:torch,exact:auto,{fast},exact:auto::stockfbank,exact:auto::math"]
    steps = [
        (
            "gpu_tests",
            [check.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
            150,
        ),
        # a CPU dry-run's fast variants run bf16 on the CPU: minutes for one clip without AVX-512 (torch's slow path)
        ("variants", variants, 600 if cpu else 90),
        # transformers' NeuCodecModel beside the engine at its default batch sizes on a GPU; one size in a CPU dry-run
        ("bench_exact", [*bench, "--mode", "exact", *(["--transformers-batch-sizes", "1"] if cpu else [])], 120),
        ("bench_fast", [*bench, "--mode", "fast"], 120),
        ("shard_job", [], 0),
        ("profile_exact", [*profile, "--mode", "exact"], 60),
        ("profile_fast", [*profile, "--mode", "fast"], 60),
    ]
    for name, cmd, limit in steps:
        if name in skip:
            continue
        if name == "shard_job":
            shard_job(check, args, work / "shard")
            continue
        env = {**check.env, "NEUCODEC_GPU_RESULTS": str(check.results)} if name == "gpu_tests" else None
        check.step(name, cmd, limit * check.scale, env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--segments", type=int, default=200, help="encoder benchmark segments (2-20 s each)")
    ap.add_argument("--profile-segments", type=int, default=60, help="segments for variants and profiles")
    ap.add_argument("--shard-segments", type=int, default=300)
    ap.add_argument("--longest", type=float, default=20.0, help="segment lengths are 2..LONGEST s (default 20)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-check-out"))
    ap.add_argument("--budget", type=float, default=460.0, help="seconds for the whole check")
    ap.add_argument("--weights", default="random", help="random (built once, seed 0) | a Hub id | a checkpoint")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.budget, sys.executable, scale=1.0 if args.device.startswith("cuda") else 3.0)
    skip = set(filter(None, args.skip.split(",")))
    check.record(env_info(args.device))
    with tempfile.TemporaryDirectory() as work:
        if args.weights == "random":
            from neucodec_workflow.engine.codec import save_random_checkpoint

            args.weights = str(save_random_checkpoint(Path(work) / "random-seed0.pt", seed=0))
        run_steps(check, args, skip, Path(work))
    check.sampler.stop.set()
    print(f"results: {check.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
