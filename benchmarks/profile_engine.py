"""Where the engine's time goes on a device: top kernels, host-device waits, how busy the device is.

    python benchmarks/profile_engine.py [--device auto|cpu|cuda] [--mode exact|fast] [--segments N] [--top K]

Decodes a synthetic shard (``encoder.synthetic_shard``: 2-20 s, 16-48 kHz), encodes it once to warm up (kernels,
allocator, cuDNN plans), then again under ``torch.profiler``. Prints a table, then one JSON line (the last line):
``busy_fraction`` is the union of device kernel intervals over the wall time of the profiled pass (on a CPU: the
fraction of wall time inside torch operators); ``syncs`` counts the runtime calls that make the host wait
(``cudaStreamSynchronize``, ``cudaEventSynchronize``, ``cudaDeviceSynchronize``, synchronous ``cudaMemcpy``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from encoder import sync, synthetic_clips  # noqa: E402

from neucodec_workflow.engine.codec import load_codec  # noqa: E402
from neucodec_workflow.engine.device import pick_device  # noqa: E402
from neucodec_workflow.engine.engine import Engine, EngineConfig  # noqa: E402

WAITS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="random", help="random | a Hub id | a checkpoint (as codec.weights)")
    ap.add_argument("--mode", default="exact", choices=["exact", "fast"])
    ap.add_argument("--segments", type=int, default=None, help="default: 4 on CPU, 60 on GPU")
    ap.add_argument("--batch-seconds", type=float, default=None, help="default: 60 on CPU, 600 on GPU")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--longest", type=float, default=20.0, help="segment lengths are 2..LONGEST s (default 20)")
    args = ap.parse_args()
    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    codec = load_codec(args.weights, device=device)
    engine = Engine(codec, EngineConfig(mode=args.mode, batch_seconds=args.batch_seconds or (600.0 if gpu else 60.0)))
    clips = synthetic_clips(args.segments or (60 if gpu else 4), seed=1, longest=args.longest)
    audio_s = sum(c.seconds for c in clips)
    list(engine.encode(clips))  # warm-up
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        list(engine.encode(clips))
        sync(device)
        wall = time.perf_counter() - t0

    events = prof.events()
    kernels = [e for e in events if gpu and e.device_type == torch.autograd.DeviceType.CUDA]
    if gpu:
        busy = union_length([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e6
    else:  # top-level torch operators on the host
        busy = union_length([(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("aten::")])
        busy /= 1e6
    by_kernel: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for e in kernels if gpu else [e for e in events if e.name.startswith("aten::")]:
        name = e.name[:90]
        by_kernel[name] += (e.time_range.end - e.time_range.start) / 1e3
        calls[name] += 1
    syncs = Counter(e.name for e in events if e.name in WAITS)
    top = [{"name": n, "ms": round(ms, 2), "calls": calls[n]} for n, ms in by_kernel.most_common(args.top)]
    result = {
        "step": "profile",
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "mode": args.mode,
        "segments": len(clips),
        "audio_seconds": round(audio_s, 1),
        "wall_seconds": round(wall, 3),
        "x_realtime": round(audio_s / wall, 1),
        "busy_fraction": round(busy / wall, 3),
        "kernel_launches": len(kernels),
        "syncs": dict(syncs),
        "top": top,
    }
    print(f"{len(clips)} segments, {audio_s:.1f} s audio, {wall:.2f} s wall, {audio_s / wall:.1f}x real time")
    print(f"busy {result['busy_fraction']:.1%} of wall; {len(kernels)} kernels; waits {dict(syncs)}")
    for t in top:
        print(f"{t['ms']:>10.1f} ms {t['calls']:>7} x  {t['name']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
