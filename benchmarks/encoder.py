"""Encoder benchmark: the stock reference path vs the engine, in one process, on a synthetic shard.

    python benchmarks/encoder.py [--segments N] [--mode exact|fast] [--device auto|cpu|cuda] [--weights random|ID|PATH]
                                 [--default-malloc] [--transformers-batch-sizes 1,2,4]

Reference = ``NeuCodec.encode_code`` as shipped (24 w2v-bert layers, numpy fbank, batch 1, fp32) on the
decoded clips. Engine = ``encode_shard`` with the batched engine, end to end from the tar (stream, decode,
resample, encode, write parquet). transformers = ``transformers.models.neucodec.NeuCodecModel`` (what a user would
pick instead of the engine) with the same weights (``transformers_neucodec.py``: explicit key map, strict load),
16 w2v-bert layers, SDPA, eval, its own ``NeuCodecFeatureExtractor`` and batched padding-aware ``encode``, on the
decoded clips sorted by length, at each of ``--transformers-batch-sizes``; the fastest is reported, with its token
agreement with the reference. Model loading is excluded from all paths and reported separately.
All paths run under the same process settings (threads, allocator, strict fp32, inference mode): glibc is told to
keep freed large blocks (``keep_freed_memory``) unless ``--default-malloc``. On small VMs the stock CodecEnc spends more time
in page faults than in its activations without it, so the default-allocator speedup is larger and
owes much of its margin to the reference's page faults. The encode job itself runs with the default
allocator (the setting gains the engine ~4 % and doubles its peak RSS).
Prints a table, then one JSON line (the last line) for results files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
from neucodec_workflow.engine.codec import build_neucodec, load_codec
from neucodec_workflow.engine.device import pick_device
from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.engine.probe import speech_like
from neucodec_workflow.shard.audio import decode_member, iter_flac_members
from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers_neucodec  # noqa: E402  (benchmarks/ is not a package)


def keep_freed_memory() -> bool:
    """glibc: serve allocations up to 1 GiB from the heap and keep freed blocks (no mmap/munmap per tensor).

    By default every tensor over 32 MiB is a fresh ``mmap`` whose pages fault in one by one: stock CodecEnc
    takes 7.7 s with the default and 3.3 s with this for 10 s of audio on the 2-core VMs here.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31))


def synthetic_shard(root: Path, segments: int, seed: int, longest: float = 20.0) -> Path:
    """Realistic segment lengths (2-20 s), speech-like, at the rates real corpora come in."""
    rng = np.random.default_rng(seed)
    rates = [16_000, 22_050, 24_000, 44_100, 48_000]
    members, ids = [], []
    for i in range(segments):
        sr = int(rng.choice(rates))
        audio = speech_like(float(rng.uniform(2, max(2.0, longest))), sr, rng)
        members.append(Member(f"seg{i:05d}.flac", flac_bytes(audio, sr)))
        ids.append(f"seg{i:05d}")
    return write_shard(root / "bench-shard", members, pd.DataFrame({"segment_id": ids, "text": ids}))


def decoded_clips(shard: Path) -> list:
    """The shard's segments as the encode job decodes them (16 kHz mono ``Clip``s)."""
    with open(shard / "audio.tar", "rb") as f:
        return [decode_member(m.removesuffix(".flac"), m, d, 1e9) for m, d in iter_flac_members(f)]


def synthetic_clips(segments: int, seed: int, longest: float = 20.0) -> list:
    """``synthetic_shard``, decoded (the shard itself is thrown away)."""
    with tempfile.TemporaryDirectory() as tmp:
        return decoded_clips(synthetic_shard(Path(tmp), segments, seed, longest))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stock_model(codec, device: str):
    """The shipped 24-layer model with the same weights (layers 17-24 are extra, unused by the tokens)."""
    full = build_neucodec(semantic_layers=24)
    full.load_state_dict(codec.model.state_dict(), strict=False)
    return full.eval().to(device)


def agreement(codes: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[int, int]:
    """(equal tokens, tokens) of ``codes`` against the reference, over every clip."""
    match = sum(int((codes[k].astype(np.int64) == ref[k]).sum()) for k in ref)
    return match, sum(len(v) for v in ref.values())


def time_transformers(codec, clips: list, device: str, batch_sizes: list[int], ref: dict[str, np.ndarray]) -> dict:
    """transformers' NeuCodecModel at each batch size: wall seconds, agreement, clips whose audio_codes_mask is off."""
    t0 = time.perf_counter()
    model = transformers_neucodec.build_transformers_model(codec, device)
    model.acoustic_decoder = None  # loaded strictly above; encoding never touches it
    fe = transformers_neucodec.feature_extractor()
    build_s = time.perf_counter() - t0
    audio = [c.audio for c in clips]
    with numerics("exact"):
        transformers_neucodec.transformers_codes(model, fe, [audio[0][:32000]], 1, device)  # warm-up
    runs = {}
    for bs in batch_sizes:
        sync(device)
        t0 = time.perf_counter()
        with numerics("exact"):
            codes, valid = transformers_neucodec.transformers_codes(model, fe, audio, bs, device)
        sync(device)
        secs = time.perf_counter() - t0
        match, total = agreement({c.segment_id: k for c, k in zip(clips, codes, strict=True)}, ref)
        wrong_mask = sum(v != c.n_tokens for c, v in zip(clips, valid, strict=True))
        runs[bs] = {"seconds": secs, "match": match, "total": total, "wrong_mask": wrong_mask}
    del model
    return {"runs": runs, "build_seconds": build_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=None, help="default: 6 on CPU, 200 on GPU")
    ap.add_argument("--mode", default="exact", choices=["exact", "fast"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--batch-seconds", type=float, default=None, help="default: 60 on CPU, 600 on GPU")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--longest", type=float, default=20.0, help="segment lengths are 2..LONGEST s (default 20)")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator as it is (all paths)")
    ap.add_argument(
        "--transformers-batch-sizes",
        default=None,
        help="batch sizes tried for transformers' NeuCodecModel, comma-separated (default in exact mode: 1,2,4 on CPU, "
        "8,32 on GPU; in fast mode none: its run would repeat exact mode's; empty: skip it)",
    )
    args = ap.parse_args()
    allocator = "glibc default" if args.default_malloc or not keep_freed_memory() else "glibc, freed blocks kept"

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.startswith("cuda")
    segments = args.segments or (200 if gpu else 6)
    batch_seconds = args.batch_seconds or (600.0 if gpu else 60.0)
    bs_arg = args.transformers_batch_sizes
    if bs_arg is None:  # transformers' path has no fast mode: fast-mode runs leave it to exact-mode ones
        bs_arg = "" if args.mode == "fast" else "8,32" if gpu else "1,2,4"
    hf_batch_sizes = [int(b) for b in bs_arg.split(",") if b.strip()]

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    codec = load_codec(args.weights, seed=args.seed, device=device)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        shard = synthetic_shard(Path(tmp), segments, args.seed, args.longest)
        clips = decoded_clips(shard)
        audio_s = sum(c.seconds for c in clips)

        # reference: stock encode_code, batch 1, strict fp32
        stock = stock_model(codec, device)
        with numerics("exact"), torch.inference_mode():
            stock.encode_code(torch.from_numpy(clips[0].audio[:32000])[None, None].to(device))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        ref = {}
        with numerics("exact"), torch.inference_mode():
            for c in clips:
                ref[c.segment_id] = (
                    stock.encode_code(torch.from_numpy(c.audio)[None, None].to(device))[0, 0].cpu().numpy()
                )
        sync(device)
        ref_s = time.perf_counter() - t0
        del stock
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        # engine: the encode rule's path, end to end from the tar
        engine = Engine(codec, EngineConfig(mode=args.mode, batch_seconds=batch_seconds))
        list(engine.encode(clips[:1]))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        ids = read_metadata_ids("bench-shard", shard / "metadata.parquet", "segment_id")
        report = encode_shard(
            "bench-shard", shard / "audio.tar", ids, shard / "out.parquet", engine, max_seconds=1e9, decode_workers=2
        )
        sync(device)
        eng_s = time.perf_counter() - t0
        peak = peak_memory_gb(device)
        out = pd.read_parquet(shard / "out.parquet")
        match = total = 0
        for seg, blob in zip(out.segment_id, out.neucodec_tokens, strict=True):
            t = np.frombuffer(blob, "<u2")
            total += len(ref[seg])
            match += int((t.astype(np.int64) == ref[seg]).sum())
        assert report.encoded == len(clips)
        kernels = engine.kernels
        del engine
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        # transformers' NeuCodecModel, same weights, on the decoded clips, at each batch size
        hf = time_transformers(codec, clips, device, hf_batch_sizes, ref) if hf_batch_sizes else None

    name = (
        torch.cuda.get_device_name()
        if gpu
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "device": name,
        "mode": args.mode,
        "segments": len(clips),
        "audio_seconds": round(audio_s, 1),
        "reference_wall_seconds": round(ref_s, 2),
        "fast_wall_seconds": round(eng_s, 2),
        "reference_x_realtime": round(audio_s / ref_s, 2),
        "fast_x_realtime": round(audio_s / eng_s, 2),
        "speedup": round(ref_s / eng_s, 2),
        "token_agreement": match / total,
        "peak_memory_gb": round(peak, 2),
        "model_load_seconds": round(load_s, 1),
        "batch_seconds": batch_seconds,
        **transformers_keys(hf, audio_s, eng_s),
        "weights": codec.provenance.get("codec_id"),
        "kernels": kernels,
        "allocator": allocator,
        "load_average_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at the start, at the end
        "torch": torch.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows = [
        ("reference: encode_code, 24 layers, batch 1", ref_s),
        (f"engine ({args.mode}), end to end from the tar", eng_s),
    ]
    if hf:
        rows += [(f"transformers NeuCodecModel, batch {bs}", r["seconds"]) for bs, r in hf["runs"].items()]
    print(
        f"\n{len(clips)} segments, {audio_s:.1f} s of audio (2-20 s each, 16-48 kHz), device {name}, weights {result['weights']}, "
        f"kernels {kernels}, allocator: {allocator}"
    )
    print(f"{'path':<48} {'wall s':>8} {'x real time':>12}")
    for label, secs in rows:
        print(f"{label:<48} {secs:>8.2f} {audio_s / secs:>12.2f}")
    print(
        f"speedup {result['speedup']:.2f}x   token agreement {match}/{total} = {result['token_agreement']:.4f}   "
        f"peak memory {peak:.2f} GB   model load {load_s:.1f} s"
    )
    if hf:
        print(
            f"transformers: best batch {result['transformers_batch_size']}, engine / transformers "
            f"{result['engine_vs_transformers']:.2f}x, agreement with the reference "
            f"{result['transformers_agreement']:.4f} (by batch size: "
            + ", ".join(f"{bs}: {r['match']}/{r['total']}" for bs, r in hf["runs"].items())
            + "), clips whose audio_codes_mask count is wrong: "
            + ", ".join(f"{bs}: {r['wrong_mask']}/{len(clips)}" for bs, r in hf["runs"].items())
        )
    print(json.dumps(result))
    return 0


def transformers_keys(hf: dict | None, audio_s: float, eng_s: float) -> dict:
    """The JSON keys of transformers' path: its best batch size's speed and agreement, and every batch size's."""
    if not hf:
        return {}
    bs, best = min(hf["runs"].items(), key=lambda kv: kv[1]["seconds"])
    return {
        "transformers_x_realtime": round(audio_s / best["seconds"], 2),
        "transformers_agreement": best["match"] / best["total"],
        "transformers_batch_size": bs,
        "transformers_wall_seconds": round(best["seconds"], 2),
        "engine_vs_transformers": round(best["seconds"] / eng_s, 2),
        "transformers_by_batch_size": {
            str(b): {"x_realtime": round(audio_s / r["seconds"], 2), "agreement": r["match"] / r["total"]}
            for b, r in hf["runs"].items()
        },
        "transformers_codes_mask_wrong_clips": best["wrong_mask"],
        "transformers_model_build_seconds": round(hf["build_seconds"], 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
