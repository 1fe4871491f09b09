"""Encoder benchmark: the stock reference path vs the engine, in one process, on a synthetic shard.

    python benchmarks/encoder.py [--segments N] [--mode exact|fast] [--device auto|cpu|cuda] [--weights random|ID|PATH]
                                 [--default-malloc]

Reference = ``NeuCodec.encode_code`` as shipped (24 w2v-bert layers, numpy fbank, batch 1, fp32) on the
decoded clips. Engine = ``encode_shard`` with the batched engine, end to end from the tar (stream, decode,
resample, encode, write parquet). Model loading is excluded from both and reported separately.
Both paths run under the same process settings: glibc is told to keep freed large blocks
(``keep_freed_memory``) unless ``--default-malloc``. On small VMs the stock CodecEnc spends more time
in page faults than in its activations without it, so the default-allocator speedup is larger and
owes much of its margin to the reference's page faults. The encode job itself runs with the default
allocator (the setting gains the engine ~4 % and doubles its peak RSS).
Prints a table, then one JSON line (the last line) for results files.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neucodec_workflow.engine.codec import build_neucodec, load_codec
from neucodec_workflow.engine.device import pick_device
from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.shard.audio import decode_member, iter_flac_members
from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids
from neucodec_workflow.testing.synth import Member, flac_bytes, speech_like, write_shard


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
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator as it is (both paths)")
    args = ap.parse_args()
    allocator = "glibc default" if args.default_malloc or not keep_freed_memory() else "glibc, freed blocks kept"

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.startswith("cuda")
    segments = args.segments or (200 if gpu else 6)
    batch_seconds = args.batch_seconds or (600.0 if gpu else 60.0)

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
        "weights": codec.provenance.get("codec_id"),
        "kernels": engine.kernels,
        "allocator": allocator,
        "torch": torch.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows = [
        ("reference: encode_code, 24 layers, batch 1", ref_s),
        (f"engine ({args.mode}), end to end from the tar", eng_s),
    ]
    print(
        f"\n{len(clips)} segments, {audio_s:.1f} s of audio (2-20 s each, 16-48 kHz), device {name}, weights {result['weights']}, "
        f"kernels {engine.kernels}, allocator: {allocator}"
    )
    print(f"{'path':<48} {'wall s':>8} {'x real time':>12}")
    for label, secs in rows:
        print(f"{label:<48} {secs:>8.2f} {audio_s / secs:>12.2f}")
    print(
        f"speedup {result['speedup']:.2f}x   token agreement {match}/{total} = {result['token_agreement']:.4f}   "
        f"peak memory {peak:.2f} GB   model load {load_s:.1f} s"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
