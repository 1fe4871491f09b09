"""Engine variants side by side on one device, against one reference: speed and token agreement per variant.

    python benchmarks/variants.py [--device auto|cpu|cuda] [--segments N] [--longest S] [--variants a,b,..]

Loads the model once, decodes a synthetic shard (``encoder.synthetic_shard``), computes the reference tokens once
(``encode_code`` on the 16-layer model, strict fp32: the tokens every path must agree with), then runs each
variant on the decoded clips after a warm-up (engine only: no tar, no parquet). Variants are
``MODE:KERNELS[:BATCH_SECONDS[:FLAGS]]``, e.g. ``exact:torch``, ``exact:triton``, ``fast:triton``, ``exact:torch:1``
(batch size one: tells batching effects from kernel effects). FLAGS, joined by ``+``, swap one piece of the engine
for the stock one, to find where exact mode departs from ``encode_code`` on a GPU: ``stockfbank`` (features from
the stock numpy extractor on the host, as ``encode_code`` computes them), ``math`` (SDPA's math backend instead of
the fused attention kernels); e.g. ``exact:auto:600:stockfbank+math``. One JSON line per variant, then a summary
line (last).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from encoder import sync, synthetic_clips  # noqa: E402

from neucodec_workflow.engine.codec import load_codec  # noqa: E402
from neucodec_workflow.engine.device import pick_device  # noqa: E402
from neucodec_workflow.engine.engine import Engine, EngineConfig  # noqa: E402
from neucodec_workflow.engine.reference import reference_tokens  # noqa: E402

DEFAULT = "exact:torch,exact:triton,fast:torch,fast:triton,exact:torch:1"


def stock_fbank(codec, device: torch.device):
    """``TorchFbank.batch`` with the features of the stock extractor (numpy, on the host), padded the same way."""
    extractor = codec.model.feature_extractor

    def batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [
            extractor(w[None].cpu(), sampling_rate=16_000, return_tensors="pt").input_features[0].to(device)
            for w in waves
        ]
        longest = max(f.shape[0] for f in feats)
        out = torch.ones(len(feats), longest, feats[0].shape[1], dtype=torch.float32, device=device)
        mask = torch.zeros(len(feats), longest, dtype=torch.long, device=device)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = 1
        return out, mask

    return batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default="random", help="random | a Hub id | a checkpoint (as codec.weights)")
    ap.add_argument("--segments", type=int, default=120)
    ap.add_argument("--longest", type=float, default=20.0)
    ap.add_argument("--variants", default=DEFAULT)
    args = ap.parse_args()
    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    t0 = time.perf_counter()
    codec = load_codec(args.weights, device=device)
    load_s = time.perf_counter() - t0
    clips = synthetic_clips(args.segments, seed=3, longest=args.longest)
    audio_s = sum(c.seconds for c in clips)
    t0 = time.perf_counter()
    refs = {c.segment_id: reference_tokens(codec, c.audio) for c in clips}
    sync(device)
    ref_s = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(json.dumps({"variant": "reference", "device": name, "x_realtime": round(audio_s / ref_s, 1)}), flush=True)
    summary = {"step": "variants", "device": name, "segments": len(clips), "audio_seconds": round(audio_s, 1)}
    summary.update(model_load_seconds=round(load_s, 1), reference_x_realtime=round(audio_s / ref_s, 1))
    for spec in args.variants.split(","):
        mode, kernels, *rest = spec.split(":")
        batch_seconds = float(rest[0]) if rest and rest[0] else (600.0 if gpu else 60.0)
        flags = set(rest[1].split("+")) if len(rest) > 1 else set()
        try:
            engine = Engine(codec, EngineConfig(mode, batch_seconds, kernels=kernels))  # type: ignore[arg-type]
            if "stockfbank" in flags:
                engine.fbank.batch = stock_fbank(codec, engine.device)  # type: ignore[method-assign]
            backend = sdpa_kernel(SDPBackend.MATH) if "math" in flags else contextlib.nullcontext()
            with backend:
                list(engine.encode(clips[:8]))  # warm-up: kernels compiled, allocator, cuDNN plans
                sync(device)
                t0 = time.perf_counter()
                out = list(engine.encode(clips))
                sync(device)
                wall = time.perf_counter() - t0
        except Exception as exc:  # one broken variant must not hide the others' numbers
            print(json.dumps({"variant": spec, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
            summary[spec] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        match = total = clips_equal = 0
        for clip, tokens in out:
            ref = refs[clip.segment_id]
            same = int((np.asarray(tokens).astype(np.int64) == ref.astype(np.int64)).sum())
            match, total, clips_equal = match + same, total + len(ref), clips_equal + (same == len(ref))
        line = {
            "variant": spec,
            "kernels": engine.kernels,
            "wall_seconds": round(wall, 3),
            "x_realtime": round(audio_s / wall, 1),
            "token_agreement": round(match / total, 6),
            "tokens_differing": total - match,
            "clips_identical": f"{clips_equal}/{len(out)}",
        }
        print(json.dumps(line), flush=True)
        summary[spec] = {k: line[k] for k in ("x_realtime", "token_agreement", "tokens_differing", "kernels")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
