"""The fixed cost of an encode job: what each shard's own process spends before its first clip is encoded.

    .venv/bin/python benchmarks/jobs.py                  # make bench-jobs: Snakemake's encode rule over small shards
    .venv/bin/python benchmarks/jobs.py --breakdown      # where one job's start-up goes, step by step
    .venv/bin/python benchmarks/jobs.py --repo /path/to/other/checkout   # the same run with another checkout's code

The run: ``--shards`` small synthetic shards (``--clips`` speech-like clips of ``--seconds`` each, 16 kHz), the seeded
random weights saved as a checkpoint the way the Hub ships one (``pytorch_model.bin``, every key: encoder and
decoder), then ``snakemake --cores N --resources gpu=1`` with the shards' token files as targets (the encode rule
only) and ``codec.weights=<that checkpoint>``, as a user runs it. It prints one JSON line:

- ``fixed_seconds_per_shard``: from each job's process start (interpreter, Snakemake's script preamble, handing the
  job to the node's resident process, which imports and loads the model only for its first job; engine) to its
  first encoded clip, from the job's ``start-up:`` log lines, averaged over the shards; the
  first clip includes its batch's encoding (``first_batch_seconds``: from the engine ready to the first clip).
- ``job_minus_encode_seconds_per_shard``: each job's wall time (Snakemake's benchmark file) less the shard encode's own
  (its report's ``wall_seconds``): the fixed cost by another route, which needs no log line (so it also measures a
  checkout from before the start-up lines, with ``--repo``).
- ``end_to_end_x_realtime``: audio seconds over the Snakemake command's wall time (its own start-up, DAG, jobs);
  ``jobs_x_realtime``: audio over the sum of the jobs' wall times; ``engine_x_realtime``: the engine's own speed on
  the same clips in this process (model loaded once, warmed up, per shard as the jobs batch them).

``--compare-own-process`` first runs the same shards with ``encode.keep_loaded_seconds: 0`` (each job imports torch
and loads the model in its own process, as before the resident process): its numbers under ``own_process``.

``--breakdown`` runs each way of starting a job in fresh processes and times each step: the interpreter, Snakemake's
preamble, torch, the job's modules, transformers + neucodec, then the model (seeded random weights built in the job
as before the weights cache; from the cache; a checkpoint read as before; a checkpoint memory-mapped), the engine, and
the first and second encode of one clip (the difference is the warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = re.compile(r"shard (?P<shard>\S+): start-up: (?P<step>[a-z ]+) at (?P<seconds>[0-9.]+) s")


# --- the run --------------------------------------------------------------------------------


def make_shards(corpus: Path, shards: int, clips: int, seconds: float) -> tuple[list[str], float]:
    """Small shards of speech-like clips (16 kHz, lengths around ``seconds``); their names and total audio seconds."""
    import numpy as np
    import pandas as pd

    from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
    from neucodec_workflow.engine.probe import speech_like

    rng = np.random.default_rng(0)
    names, total = [], 0.0
    for s in range(shards):
        name = f"bench/shard-{s:05d}"
        members, rows = [], []
        for i in range(clips):
            d = round(seconds * (0.8 + 0.4 * rng.random()), 2)
            seg = f"bench_{s:05d}_{i:03d}"
            members.append(Member(f"{seg}.flac", flac_bytes(speech_like(d, 16_000, rng), 16_000)))
            rows.append({"segment_id": seg, "text": f"clip {i}", "language": "en", "speaker": "s", "duration": d})
            total += d
        write_shard(corpus / name, members, pd.DataFrame(rows))
        names.append(name)
    return names, total


def save_checkpoint(path: Path, seed: int) -> Path:
    """The seeded random weights as a Hub-style checkpoint: one torch zip file, every key (as ``pytorch_model.bin``)."""
    import torch

    from neucodec_workflow.engine.codec import random_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in random_state_dict(seed).items()}, path)
    return path


def snakemake_run(
    repo: Path, work: Path, corpus: Path, shards: list[str], weights: Path, cores: int, overrides: dict[str, object]
) -> float:
    from neucodec_workflow.record.contract import TOKENS

    settings = work / "bench.json"  # a config file: nested values keep their types (not so in --config)
    settings.write_text(json.dumps({"codec": {"weights": str(weights), "device": "cpu"}, "encode": overrides}))
    config = {"corpus": str(corpus), "output": str(work / "out")}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(repo / "config" / "config.yaml"),
        str(settings),
        "--workflow-profile",
        str(repo / "profiles" / "default"),
        "--cores",
        str(cores),
        "--resources",
        "gpu=1",
        "--config",
        *[f"{k}={v}" for k, v in config.items()],
        "--",
        *[str(corpus / s / TOKENS) for s in shards],
    ]
    # a resident process of its own (workflow/resident.py): the run's first job starts it, as on a fresh node
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEUCODEC_BENCH_RUN": f"{os.getpid()}-{time.time()}"}
    if repo != REPO:  # the other checkout's package first (this venv's editable install points here)
        env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return wall


def job_numbers(work: Path, corpus: Path, shards: list[str]) -> list[dict[str, float | None]]:
    """Per shard: its start-up steps (seconds since its process started), its job's wall time, its encode's."""
    from neucodec_workflow.record.contract import TOKENS, read_report

    out = []
    for shard in shards:
        steps = {}
        log_file = next((work / "out" / "logs").rglob(f"{Path(shard).name}.log"), None)
        for line in log_file.read_text().splitlines() if log_file else []:
            m = STARTUP.search(line)
            if m and m["shard"] == shard:
                steps[m["step"].replace(" ", "_")] = float(m["seconds"])
        bench = next((work / "out" / "benchmarks").rglob(f"{Path(shard).name}.tsv"))
        job_wall = float(bench.read_text().splitlines()[1].split("\t")[0])
        report = read_report(corpus / shard / TOKENS) or {}
        out.append({**steps, "job_wall": job_wall, "encode_wall": float(report["wall_seconds"])})
    return out


def engine_speed(corpus: Path, shards: list[str], weights: Path, overrides: dict[str, object]) -> float:
    """Audio seconds per wall second of the engine alone on the shards' clips: the model loaded once, one warm-up
    shard, then each shard's clips as one encode (the jobs batch them so)."""
    import torch
    import yaml

    from neucodec_workflow.engine.codec import load_codec
    from neucodec_workflow.engine.engine import Engine, EngineConfig
    from neucodec_workflow.record.contract import TAR
    from neucodec_workflow.shard.audio import decode_member, iter_flac_members

    schema = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())["properties"]["encode"]["properties"]
    encode = {**{k: v.get("default") for k, v in schema.items()}, **overrides}
    torch.set_num_threads(2)
    engine = Engine(load_codec(str(weights)), EngineConfig(mode=encode["mode"], batch_seconds=encode["batch_seconds"]))
    per_shard = []
    for shard in shards:
        with open(corpus / shard / TAR, "rb") as f:
            per_shard.append(
                [decode_member(m.split(".")[0], m, data, max_seconds=120) for m, data in iter_flac_members(f)]
            )
    list(engine.encode(per_shard[0]))  # warm-up
    audio = wall = 0.0
    for clips in per_shard:
        t0 = time.perf_counter()
        for _clip, tokens in engine.encode(clips):
            assert not isinstance(tokens, Exception), tokens
        wall += time.perf_counter() - t0
        audio += sum(len(c.audio) for c in clips) / 16_000
    return audio / wall


def run(args: argparse.Namespace) -> dict[str, object]:
    repo = args.repo.resolve()
    overrides: dict[str, object] = {"audit_segments": args.audit_segments}
    if args.batch_seconds:
        overrides["batch_seconds"] = args.batch_seconds
    if args.keep_loaded is not None:
        overrides["keep_loaded_seconds"] = args.keep_loaded
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        shards, audio = make_shards(corpus, args.shards, args.clips, args.seconds)
        t0 = time.monotonic()
        weights = save_checkpoint(work / "weights" / "pytorch_model.bin", seed=0)
        checkpoint_seconds = time.monotonic() - t0
        own = None
        if args.compare_own_process:  # the same shards, each job loading the model in its own process, first
            (work / "own").mkdir()
            own_corpus = work / "own" / "corpus"
            make_shards(own_corpus, args.shards, args.clips, args.seconds)
            own_overrides = {**overrides, "keep_loaded_seconds": 0}
            own_wall = snakemake_run(repo, work / "own", own_corpus, shards, weights, args.cores, own_overrides)
            own_jobs = job_numbers(work / "own", own_corpus, shards)
            own = {
                "fixed_seconds_per_shard": _mean(own_jobs, "first_clip_encoded"),
                "job_minus_encode_seconds_per_shard": round(
                    statistics.mean(j["job_wall"] - j["encode_wall"] for j in own_jobs), 2
                ),
                "end_to_end_x_realtime": round(audio / own_wall, 3),
                "snakemake_wall_seconds": round(own_wall, 1),
            }
        wall = snakemake_run(repo, work, corpus, shards, weights, args.cores, overrides)
        jobs = job_numbers(work, corpus, shards)
        engine = engine_speed(corpus, shards, weights, overrides) if not args.no_engine else None

    def mean(key: str) -> float | None:
        return _mean(jobs, key)

    first = mean("first_clip_encoded")
    ready = mean("engine_ready")
    return {
        "fixed_seconds_per_shard": first,
        "startup": {
            step: mean(step) for step in ("imports_done", "model_loaded", "engine_ready", "first_clip_encoded")
        },
        "first_batch_seconds": round(first - ready, 2) if first is not None and ready is not None else None,
        "job_minus_encode_seconds_per_shard": round(statistics.mean(j["job_wall"] - j["encode_wall"] for j in jobs), 2),
        "fixed_seconds_by_shard": [j.get("first_clip_encoded") for j in jobs],
        "end_to_end_x_realtime": round(audio / wall, 3),
        "jobs_x_realtime": round(audio / sum(j["job_wall"] for j in jobs), 3),
        "engine_x_realtime": round(engine, 3) if engine else None,
        "snakemake_wall_seconds": round(wall, 1),
        "audio_seconds": round(audio, 1),
        "shards": args.shards,
        "clips_per_shard": args.clips,
        "cores": args.cores,
        "audit_segments": args.audit_segments,
        "checkpoint": "pytorch_model.bin (seeded random weights, every key)",
        "checkpoint_save_seconds": round(checkpoint_seconds, 1),
        "keep_loaded_seconds": overrides.get("keep_loaded_seconds", "config default"),
        "own_process": own,
    }


def _mean(jobs: list[dict[str, float | None]], key: str) -> float | None:
    values = [j[key] for j in jobs if j.get(key) is not None]
    return round(statistics.mean(values), 2) if len(values) == len(jobs) else None  # type: ignore[arg-type]


# --- the breakdown --------------------------------------------------------------------------

# One fresh process per way of starting; each step timed in it. ``WAY`` and ``CHECKPOINT`` are set by the parent.
CHILD = r"""
import json, sys, time
out = {}
def step(name, t0):
    out[name] = round(time.perf_counter() - t0, 3)
    return time.perf_counter()
t = time.perf_counter()
import pickle
from snakemake.logging import logger
from snakemake.iocontainers import Snakemake
t = step("snakemake_preamble", t)
try:
    from neucodec_workflow.workflow.jobs import setup_logging
except ImportError:
    from neucodec_workflow.workflow.job_log import setup_logging
t = step("jobs_module", t)
import torch
t = step("torch", t)
torch.set_num_threads(2)
from neucodec_workflow.engine.codec import load_codec
from neucodec_workflow.engine.device import device_name, pick_device
from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.reference import audit_reference
from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids
from neucodec_workflow.storage.s3 import is_s3
from neucodec_workflow.storage.streams import open_source
from neucodec_workflow.storage.uploads import publish
t = step("job_imports", t)
import neucodec.model
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel
t = step("transformers_neucodec", t)
from pathlib import Path
from neucodec_workflow.engine import codec as C
if WAY == "random_in_job":  # as every job did before the weights cache: make_random_weights, in two steps
    torch.manual_seed(0)
    model = C.build_neucodec(16)
    t = step("random_init", t)
    probe = torch.from_numpy(C.probe_signal())[None, None]
    captured = []
    h = model.fc_prior.register_forward_hook(lambda _m, a, _o: captured.append(a[0].reshape(-1, 2048).clone()))
    with torch.inference_mode():
        model.encode_code(probe)
    h.remove()
    with torch.no_grad():
        C._rescale_linear(model.fc_prior, captured[0])
        C._rescale_linear(model.generator.quantizer.project_in, model.fc_prior(captured[0]), gain=1.5)
    t = step("variance_probe", t)
elif WAY == "random_cached":
    path = C.random_weights_file(0)
    t = step("cache_lookup", t)
    state = C._read_state_dict(path)[0]
    t = step("checkpoint_read", t)
    model, _ = C._model_from_state(state, 16, "random")
    t = step("construct_and_load", t)
elif WAY == "checkpoint_before":  # as load_codec read a checkpoint before: allocate, init the decoder, copy, hash
    model = C.build_neucodec(16, init=False)
    t = step("construct", t)
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    t = step("checkpoint_read", t)
    C.load_state_dict_checked(model, state, 16, "x")
    t = step("load_state_dict", t)
    import hashlib
    h = hashlib.sha256()
    with open(CHECKPOINT, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    t = step("sha256", t)
elif WAY == "checkpoint_mapped":
    state = C._read_state_dict(Path(CHECKPOINT))[0]
    t = step("checkpoint_read", t)
    model, _ = C._model_from_state(state, 16, "x")
    t = step("construct_and_load", t)
    C.fingerprint(Path(CHECKPOINT))
    t = step("sha256", t)
model = model.eval().requires_grad_(False).to("cpu")
codec = C.Codec(model=model, provenance={"precision": "fp32"})
t = step("to_device", t)
engine = Engine(codec, EngineConfig(mode="exact", batch_seconds=120.0))
t = step("engine", t)
from neucodec_workflow.engine.probe import speech_like
from neucodec_workflow.record.records import Clip
import numpy as np
clip = Clip("c", "c.flac", speech_like(1.5, 16000, np.random.default_rng(1)), 16000, 1)
list(engine.encode([clip]))
t = step("first_clip_1.5s", t)
list(engine.encode([clip]))
t = step("second_clip_1.5s", t)
print("BREAKDOWN " + json.dumps(out))
"""

WAYS = ("random_in_job", "random_cached", "checkpoint_before", "checkpoint_mapped")


def interpreter_seconds() -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


def breakdown(args: argparse.Namespace) -> dict[str, object]:
    from neucodec_workflow.engine.codec import random_weights_file

    random_weights_file(0)  # built now if needed: the ways below time loading it, not building it
    result: dict[str, object] = {"interpreter": interpreter_seconds()}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "pytorch_model.bin", seed=0)
        for way in args.ways.split(","):
            code = f"WAY = {way!r}\nCHECKPOINT = {str(checkpoint)!r}\n" + CHILD
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            line = next((x for x in proc.stdout.splitlines() if x.startswith("BREAKDOWN ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{way} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            steps = json.loads(line.removeprefix("BREAKDOWN "))
            result[way] = {**steps, "process_wall": round(wall, 2)}
            print(way, json.dumps(result[way]), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--clips", type=int, default=3, help="clips per shard")
    ap.add_argument("--seconds", type=float, default=1.5, help="clip length (each within ±20 %%)")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    ap.add_argument("--audit-segments", type=int, default=0, help="encode.audit_segments (config default: 4)")
    ap.add_argument("--batch-seconds", type=float, help="encode.batch_seconds (default: the config's)")
    ap.add_argument("--keep-loaded", type=float, help="encode.keep_loaded_seconds (default: the config's)")
    ap.add_argument(
        "--compare-own-process",
        action="store_true",
        help="first run the same shards with keep_loaded_seconds=0 (each job loads the model itself): own_process",
    )
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose workflow and package run the jobs")
    ap.add_argument("--no-engine", action="store_true", help="skip the engine-only measurement")
    ap.add_argument("--breakdown", action="store_true", help="time the steps of a job's start-up instead")
    ap.add_argument("--ways", default=",".join(WAYS), help="--breakdown: which ways of starting (comma-separated)")
    args = ap.parse_args(argv)

    result = breakdown(args) if args.breakdown else run(args)
    result.update(
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        load_average=[round(x, 2) for x in os.getloadavg()],
        commit=subprocess.run(
            ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
