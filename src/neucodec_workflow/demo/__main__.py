"""``make demo``: build the small local corpus, run the workflow on it (all three training-data formats), say where
everything is.

python -m neucodec_workflow.demo [--weights random|neuphonic/neucodec|PATH] [--tokenizer test|HUB_ID|DIR]
    [--cores N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from neucodec_workflow.dataset.formats import FORMATS
from neucodec_workflow.demo.corpus import make_demo_corpus
from neucodec_workflow.demo.tokenizer import build_test_tokenizer
from neucodec_workflow.record.contract import RANDOM_BANNER


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="random", help="codec.weights for the demo (default: random, offline)")
    ap.add_argument("--corpus", default="demo/corpus")
    ap.add_argument("--output", default="demo/output")
    ap.add_argument("--cores", default="all")
    ap.add_argument(
        "--tokenizer",
        default="test",
        help="sft.multilingual_tts.tokenizer (default: test, a small tokenizer of the real class with the model's "
        "special tokens, built offline into demo/tokenizer; the model's own: Scicom-intl/Multilingual-TTS-1.7B-Base)",
    )
    args = ap.parse_args(argv)

    corpus, output = Path(args.corpus), Path(args.output)
    if not corpus.exists():
        info = make_demo_corpus(corpus)
        print(f"demo corpus: {info['shards']} shards of {info['speech']} in {corpus}/", flush=True)
    tokenizer = args.tokenizer
    if tokenizer == "test":
        tokenizer = str(corpus.parent / "tokenizer")
        if not Path(tokenizer, "tokenizer.json").exists():
            build_test_tokenizer(Path(tokenizer))
        print(f"multilingual_tts: TEST tokenizer in {tokenizer} (not the model's: its ids are not Qwen3's)", flush=True)
    formats = corpus.parent / "formats.json"  # a config file: nested values keep their types (not so in --config)
    settings = {
        "sft": {"formats": list(FORMATS), "multilingual_tts": {"tokenizer": tokenizer}},
        "codec_fit": {"enabled": True},
    }
    formats.write_text(json.dumps(settings))
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
        "--configfile",
        "config/config.yaml",
        str(formats),
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
    report = output.parent / "report.html"
    rc = subprocess.call([*cmd, "--report", str(report)], stdout=subprocess.DEVNULL)
    if rc:
        print(f"snakemake --report failed (exit {rc})", file=sys.stderr)
        return rc
    stats = json.loads((output / "stats.json").read_text())
    print(f"\ndone in {time.time() - start:.0f} s")
    print(f"  tokens per shard : {corpus}/<shard>/neucodec_tokens.parquet ({stats['shards']} shards)")
    print(f"  shard reports    : {output}/shards/<shard>.json")
    print(f"  SFT dataset      : {output}/sft_dataset/  (datasets.load_dataset('{output}/sft_dataset'))")
    print(f"  Multilingual-TTS : {output}/multilingual_tts/train/  (streaming.LocalDataset; README 'Training data')")
    print(f"  NeuTTS           : {output}/neutts/  (datasets.load_dataset('{output}/neutts'))")
    for fmt, by_split in stats["sft_formats"].items():
        for split, t in by_split.items():
            print(f"    {fmt} {split}: rows {t['rows']}, left out {t.get('dropped_by_reason') or 'none'}")
    print(f"  stats            : {output}/stats.json, {output}/shards.parquet (a row per shard)")
    print(f"  codec fit        : {output}/codec_fit/codec_fit.json (per language; random weights: meaningless)")
    print(f"  HTML report      : {report}  (snakemake --report {report}; figures in {output}/report/)")
    print(
        f"  segments {stats['segments']}: {stats['encoded']} encoded, {stats['rejected']} rejected {stats['rejects_by_reason']}; "
        f"{stats['audio_hours'] * 3600:.1f} s audio, {stats['tokens']} tokens, "
        f"{stats['audio_seconds_per_wall_second']:.2f}x real time while encoding"
    )
    if stats["random_weights"]:
        print(RANDOM_BANNER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
