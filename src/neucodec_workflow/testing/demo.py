"""``make demo``: build the small local corpus, run the workflow on it, say where everything is.

python -m neucodec_workflow.testing.demo [--weights random|neuphonic/neucodec|PATH] [--cores N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from neucodec_workflow.jobs import RANDOM_BANNER
from neucodec_workflow.testing.synth import make_demo_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="random", help="codec.weights for the demo (default: random, offline)")
    ap.add_argument("--corpus", default="demo/corpus")
    ap.add_argument("--output", default="demo/output")
    ap.add_argument("--cores", default="all")
    args = ap.parse_args(argv)

    corpus, output = Path(args.corpus), Path(args.output)
    if not corpus.exists():
        info = make_demo_corpus(corpus)
        print(f"demo corpus: {info['shards']} shards of {info['speech']} in {corpus}/", flush=True)
    if args.weights == "random":
        print(RANDOM_BANNER, flush=True)
    start = time.time()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(args.cores),
        "--resources",
        "gpu=1",
        "--config",
        f"corpus={corpus}",
        f"output={output}",
        f"codec={json.dumps({'weights': args.weights})}",
    ]
    print("running:", " ".join(cmd[2:]), flush=True)
    rc = subprocess.call(cmd)
    if rc:
        print(f"demo failed (exit {rc}); see {output}/logs/", file=sys.stderr)
        return rc
    stats = json.loads((output / "stats.json").read_text())
    print(f"\ndone in {time.time() - start:.0f} s")
    print(f"  tokens per shard : {corpus}/<shard>/neucodec_tokens.parquet ({stats['shards']} shards)")
    print(f"  shard reports    : {output}/shards/<shard>.json")
    print(f"  SFT dataset      : {output}/sft_dataset/  (datasets.load_dataset('{output}/sft_dataset'))")
    print(f"  stats            : {output}/stats.json")
    print(
        f"  segments {stats['segments']}: {stats['encoded']} encoded, {stats['rejected']} rejected {stats['rejects_by_reason']}; "
        f"{stats['hours'] * 3600:.1f} s audio, {stats['tokens']} tokens, "
        f"{stats['audio_seconds_per_wall_second']:.2f}x real time while encoding"
    )
    if stats["random_weights"]:
        print(RANDOM_BANNER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
