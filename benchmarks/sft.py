"""Multilingual-TTS format benchmark, on ONE core: speech tokens per second of ``mtts_part`` against the upstream way,
and how many voice-cloning pairs the within-shard choice keeps.

    python benchmarks/sft.py [--segments N] [--speakers N] [--language L] [--upstream-rows N] [--repeats N]
                             [--tokenizer DIR|ID] [--out DIR] [--coverage-shards N] [--coverage-segments N]
                             [--coverage-speakers N] [--corpus DIR]

Throughput: a synthetic shard (``--segments`` utterances of 2-20 s at 50 tokens/s, multilingual text at 2.5 words/s,
``--speakers`` speakers of Zipf-like sizes, 5 % without a speaker) through ``sft.shard_rows`` (not timed), then
``mtts_part`` end to end: tokenize the text parts (the tokenizer's ``tokenizers`` backend, in batches), speech ids by
arithmetic, packing, the MDS file written and hashed (to ``--out``, default the temp dir; the previous call's file is
removed first, untimed). Once with TTS rows only (``pairs_per_speaker=0``) and once with the default voice-cloning
pairs; the time its tokenizer calls take is measured inside the same call. The tokenizer is the test one
(``neucodec_workflow/demo/tokenizer.py``: the model's class, byte-level BPE, the model's special and speech tokens)
unless ``--tokenizer``. Upstream = render every row with its ``<|s_N|>`` strings and tokenize the whole string (same
backend, same core), on ``--upstream-rows`` rows of each kind; its ids are checked equal to ours; packing and writing
are not counted for it (so the ratio is a lower bound). Each timing: a warm-up, then the best of ``--repeats``. Beside
wall time, the CPU time the process used (user + system) per call: on a machine other processes load, what a call
costs its one core.

Pair coverage: ordered pairs (different texts, both at least 5 characters) of each speaker, capped at the default
``pairs_per_speaker`` per speaker, over the whole corpus, against what pairs made within each shard keep (capped per speaker and shard), for
a synthetic corpus whose speakers spread over the shards (sorted by speaker, or shuffled) and, with ``--corpus``, a
real corpus (its ``*/metadata.parquet`` files only, default column names).
Prints tables, then one JSON line (the last line) for results files.
"""

from __future__ import annotations

import os

# one core, before anything loads the tokenizers library
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from neucodec_workflow.dataset.formats import MULTILINGUAL_TTS, schema_defaults  # noqa: E402
from neucodec_workflow.dataset.mtts import load_tokenizer, mtts_part  # noqa: E402
from neucodec_workflow.dataset.mtts_rows import (  # noqa: E402
    MttsSettings,
    build_rows,
    render_tts,
    render_vc,
    speaker_names,
)
from neucodec_workflow.dataset.mtts_tokenizer import SpeechTokenizer  # noqa: E402
from neucodec_workflow.dataset.sft import metadata_fields, shard_rows  # noqa: E402
from neucodec_workflow.demo.tokenizer import WORDS, build_test_tokenizer, sample_text  # noqa: E402

COLUMNS = {
    "segment_id": "segment_id",
    "text": ["text", "transcript"],
    "language": "language",
    "speaker": "speaker",
    "duration": "duration",
    "dataset": "dataset",
}
DEFAULTS = MttsSettings.from_config(schema_defaults(MULTILINGUAL_TTS))  # the config schema's defaults
CAP = DEFAULTS.pairs_per_speaker
MIN_REF = DEFAULTS.min_ref_chars


def speaker_sizes(rng: np.random.Generator, n: int, speakers: int) -> np.ndarray:
    """Which speaker each of ``n`` segments has: Zipf-like sizes (weight 1/k^0.8), a random order."""
    weights = 1.0 / np.arange(1, speakers + 1) ** 0.8
    return rng.permutation(rng.choice(speakers, n, p=weights / weights.sum()))


def synthetic_rows(
    rng: np.random.Generator, segments: int, speakers: int, language: str | None = None, shard: str = "bench"
) -> pd.DataFrame:
    """A shard's rows as ``sft.shard_rows`` makes them."""
    seconds = rng.uniform(2, 20, segments)
    counts = np.round(seconds * 50).astype(np.int32)
    ids = [f"{shard}-{i:06d}" for i in range(segments)]
    who = speaker_sizes(rng, segments, speakers)
    tokens = pd.DataFrame(
        {
            "segment_id": ids,
            "neucodec_tokens": [rng.integers(0, 65536, c, dtype=np.uint16).tobytes() for c in counts],
            "token_count": counts,
        }
    )
    fields = pd.DataFrame(
        {
            "segment_id": ids,
            "text": [sample_text(rng, max(1, round(s * 2.5)), language) for s in seconds],
            "language": "xx",
            "speaker": [None if rng.random() < 0.05 else f"spk{k:04d}" for k in who],
            "dataset": "bench",
            "duration": seconds,
        }
    )
    rows, excluded = shard_rows(shard, tokens, fields)
    assert not excluded
    return rows


def best(fn, repeats: int) -> tuple[float, object]:
    """A warm-up call, then the best wall time of ``repeats`` calls (and the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def timed_part(
    tokenizer: SpeechTokenizer, rows: pd.DataFrame, settings: MttsSettings, out: Path
) -> Callable[[], tuple[dict, float, float, float]]:
    """``mtts_part`` as one call: its summary, its wall time, the time its tokenizer calls (``heads``) took in it and
    the CPU time the process used (what the call cost its core when other processes share it: an honest per-core
    figure on a loaded machine).
    The previous call's file is removed first, untimed: a part is written once, to a new file (Snakemake removes a
    job's outputs before it runs)."""
    heads = tokenizer.heads

    def part() -> tuple[dict, float, float, float]:
        spent = 0.0

        def timed_heads(texts):
            nonlocal spent
            t0 = time.perf_counter()
            try:
                return heads(texts)
            finally:
                spent += time.perf_counter() - t0

        (out / "bench.mds").unlink(missing_ok=True)
        tokenizer.heads = timed_heads  # type: ignore[method-assign]  # timed for this benchmark only
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = mtts_part("bench", rows, tokenizer, settings, out / "bench.mds", "bench.mds")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            del tokenizer.heads
        return summary, wall, spent, cpu

    return part


def throughput(
    tokenizer: SpeechTokenizer,
    rows: pd.DataFrame,
    settings: MttsSettings,
    repeats: int,
    out: Path,
    upstream_rows: int,
) -> dict:
    """``mtts_part`` end to end with ``tokenizer`` (a warm-up, then the best of ``repeats`` calls), and the upstream
    way on a subset."""
    part = timed_part(tokenizer, rows, settings, out)
    part()  # warm-up
    runs = [part() for _ in range(repeats)]
    summary, wall, tokenizer_s, _ = min(runs, key=lambda r: r[1])
    cpu = min(r[3] for r in runs)

    built = build_rows("bench", rows, tokenizer, settings)
    texts = [t.strip() for t in rows["text"].tolist()]
    names = speaker_names(rows, settings.speaker_format)[0]
    pairs = built.rows.ref >= 0

    # upstream: render the rows with <|s_N|> strings and tokenize them whole, on a subset of each kind
    codes = rows["neucodec_tokens"]
    rng = np.random.default_rng(0)
    upstream: dict[str, dict] = {}
    for kind, candidates in (("tts", np.flatnonzero(~pairs)), ("voice_cloning", np.flatnonzero(pairs))):
        if not len(candidates):
            continue
        chosen = np.sort(rng.choice(candidates, min(upstream_rows, len(candidates)), replace=False)).tolist()

        def upstream_ids(chosen: list[int] = chosen) -> list[np.ndarray]:
            rendered = []
            for r in chosen:
                ref, target = int(built.rows.ref[r]), int(built.rows.target[r])
                if ref < 0:
                    rendered.append(render_tts(names[target], texts[target], codes.iloc[target]))
                else:
                    rendered.append(render_vc(texts[ref], codes.iloc[ref], texts[target], codes.iloc[target]))
            encodings = tokenizer.backend.encode_batch_fast(rendered, add_special_tokens=False)
            return [np.array(e.ids, np.uint32) for e in encodings]

        up_s, ids = best(upstream_ids, repeats)
        assert isinstance(ids, list)
        for r, got in zip(chosen, ids, strict=True):
            assert np.array_equal(got, built.rows.ids(r, r + 1)), f"upstream ids differ for row {r}"
        speech = int(built.rows.speech[chosen].sum())
        upstream[kind] = {"rows": len(chosen), "speech_tokens": speech, "seconds": round(up_s, 4)}
        upstream[kind]["speech_tokens_per_s"] = speech / up_s

    speech = summary["speech_tokens"]
    result = {
        "pairs_per_speaker": settings.pairs_per_speaker,
        "rows": summary["rows"],
        "blocks": summary["blocks"],
        "tokens": summary["tokens"],
        "speech_tokens": speech,
        "mds_bytes": summary["mds"]["raw_data"]["bytes"],
        "seconds": round(wall, 4),
        "speech_tokens_per_s": speech / wall,
        "tokenizer_seconds": round(tokenizer_s, 4),
        "tokenizer_share": tokenizer_s / wall,
        "speech_tokens_per_s_without_tokenizer": speech / (wall - tokenizer_s),
        "cpu_seconds": round(cpu, 4),
        "speech_tokens_per_cpu_s": speech / cpu,
        "upstream": upstream,
    }
    # the same rows' mix the upstream way: its rate per kind, weighted by our rows' speech tokens
    if upstream:
        tts_speech = int(built.rows.speech[~pairs].sum())
        vc_speech = speech - tts_speech
        up_s = sum(
            share / upstream[kind]["speech_tokens_per_s"]
            for kind, share in (("tts", tts_speech), ("voice_cloning", vc_speech))
            if share
        )
        result["upstream_speech_tokens_per_s"] = speech / up_s
        result["speedup"] = result["speech_tokens_per_s"] / result["upstream_speech_tokens_per_s"]
    return result


def coverage(frame: pd.DataFrame, cap: int = CAP) -> dict:
    """Pairs over the corpus against pairs within shards: ``frame`` has shard, speaker (null: none), text."""
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    frame = frame[frame["speaker"].notna() & (frame["text"].str.len() >= MIN_REF)]

    def possible(keys: list[str]) -> pd.Series:
        n = frame.groupby(keys).size().astype(np.int64)
        same = frame.groupby([*keys, "text"]).size().astype(np.int64) ** 2
        return n * n - same.groupby(level=keys).sum()

    corpus = possible(["speaker"])
    within = possible(["shard", "speaker"])
    return {
        "segments": len(frame),
        "shards": int(frame["shard"].nunique()),
        "speakers": int(frame["speaker"].nunique()),
        "shards_per_speaker": float(frame.groupby("speaker")["shard"].nunique().mean()),
        "possible_corpus": int(corpus.sum()),
        "possible_within": int(within.sum()),
        "possible_fraction": float(within.sum() / max(corpus.sum(), 1)),
        "capped_corpus": int(corpus.clip(upper=cap).sum()),
        "capped_within": int(within.clip(upper=cap).sum()),
        "capped_fraction": float(within.clip(upper=cap).sum() / max(corpus.clip(upper=cap).sum(), 1)),
        "speakers_with_pairs_corpus": int((corpus > 0).sum()),
        "speakers_with_pairs_within": int((within.groupby(level="speaker").sum() > 0).sum()),
    }


def synthetic_coverage(rng: np.random.Generator, shards: int, per_shard: int, speakers: int) -> dict[str, dict]:
    """Speakers of Zipf-like sizes over ``shards`` shards: sorted by speaker then cut (how corpora collected per
    source come), or shuffled; distinct texts."""
    n = shards * per_shard
    who = speaker_sizes(rng, n, speakers)
    text = [f"utterance {i}" for i in range(n)]
    layouts = {"sorted by speaker": np.sort(who), "shuffled": who}
    return {
        name: coverage(pd.DataFrame({"shard": np.arange(n) // per_shard, "speaker": order, "text": text}))
        for name, order in layouts.items()
    }


def corpus_coverage(root: Path) -> dict:
    """The metadata of a real corpus: one shard per directory with a metadata.parquet."""
    frames = []
    for meta in sorted(root.rglob("metadata.parquet")):
        shard = str(meta.parent.relative_to(root))
        fields = metadata_fields(shard, pd.read_parquet(meta), COLUMNS)
        speaker = fields["speaker"].astype("string")
        dataset = fields["dataset"].astype("string").fillna("unknown")
        key = (dataset + "_" + speaker).where(speaker.notna() & (speaker != ""))
        frames.append(pd.DataFrame({"shard": shard, "speaker": key, "text": fields["text"].astype("string")}))
    if not frames:
        raise SystemExit(f"no metadata.parquet under {root}")
    frame = pd.concat(frames, ignore_index=True)
    return coverage(frame[frame["text"].notna()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=2000, help="segments in the throughput shard (default 2000)")
    ap.add_argument("--speakers", type=int, default=40, help="speakers in the throughput shard (default 40)")
    ap.add_argument("--upstream-rows", type=int, default=200, help="rows of each kind the upstream way (default 200)")
    ap.add_argument("--language", default=None, help=f"one language of the text sample {sorted(WORDS)} (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=None, help="a tokenizer directory or Hub id (default: the test tokenizer)")
    ap.add_argument("--coverage-shards", type=int, default=64)
    ap.add_argument("--coverage-segments", type=int, default=2000, help="segments per shard")
    ap.add_argument("--coverage-speakers", type=int, default=400)
    ap.add_argument("--corpus", type=Path, default=None, help="a real corpus: its metadata.parquet files only")
    ap.add_argument("--out", type=Path, default=None, help="where the MDS file is written (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})  # one core for everything measured

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        name = args.tokenizer or str(build_test_tokenizer(Path(tmp) / "tokenizer"))
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(name)
        load_s = time.perf_counter() - t0
        rows = synthetic_rows(rng, args.segments, args.speakers, args.language)
        out = Path(tempfile.mkdtemp(dir=args.out, prefix="bench-sft-")) if args.out else Path(tmp)
        try:
            runs = [
                throughput(
                    tokenizer,
                    rows,
                    replace(DEFAULTS, pairs_per_speaker=pairs),
                    args.repeats,
                    out,
                    args.upstream_rows,
                )
                for pairs in (0, CAP)
            ]
        finally:
            shutil.rmtree(out, ignore_errors=True)
    synthetic = synthetic_coverage(rng, args.coverage_shards, args.coverage_segments, args.coverage_speakers)
    real = corpus_coverage(args.corpus) if args.corpus else None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    audio_h = float(rows["duration"].sum()) / 3600
    print(
        f"\nshard: {len(rows)} segments, {audio_h:.1f} h, {args.speakers} speakers, text {args.language or 'mixed'}; "
        f"tokenizer "
        f"{'test (Qwen2Tokenizer class)' if not args.tokenizer else name} loaded in {load_s:.1f} s; one core "
        f"(cpu {cpu}, {platform.processor() or platform.machine()})"
    )
    print(
        f"{'rows':<22} {'speech tok':>11} {'MDS MB':>8} {'wall s':>7} {'M speech tok/s':>15} {'tokenizer':>10} "
        f"{'M/s w/o tok':>12} {'M/cpu-s':>8} {'upstream M/s':>13} {'speedup':>8}"
    )
    for r in runs:
        label = f"TTS {r['rows']['tts']}" + (
            f" + VC {r['rows']['voice_cloning']}" if r["rows"]["voice_cloning"] else ""
        )
        print(
            f"{label:<22} {r['speech_tokens']:>11,} {r['mds_bytes'] / 1e6:>8.0f} {r['seconds']:>7.3f} "
            f"{r['speech_tokens_per_s'] / 1e6:>15.2f} {r['tokenizer_share']:>9.0%} "
            f"{r['speech_tokens_per_s_without_tokenizer'] / 1e6:>12.1f} {r['speech_tokens_per_cpu_s'] / 1e6:>8.2f} "
            f"{r.get('upstream_speech_tokens_per_s', 0) / 1e6:>13.3f} {r.get('speedup', 0):>7.1f}x"
        )
    print(f"\nvoice-cloning pairs kept within shards (cap {CAP:,} per speaker; per shard within shards)")
    print(f"{'corpus':<34} {'shards':>6} {'speakers':>8} {'shards/spk':>10} {'possible kept':>14} {'capped kept':>12}")
    named = [(f"synthetic, {k}", v) for k, v in synthetic.items()] + ([(str(args.corpus), real)] if real else [])
    for label, c in named:
        print(
            f"{label:<34} {c['shards']:>6} {c['speakers']:>8} {c['shards_per_speaker']:>10.1f} "
            f"{c['possible_fraction']:>14.1%} {c['capped_fraction']:>12.1%}"
        )
    result = {
        "segments": len(rows),
        "speakers": args.speakers,
        "language": args.language or "mixed",
        "audio_hours": round(audio_h, 2),
        "tokenizer": "test" if not args.tokenizer else name,
        "tokenizer_load_seconds": round(load_s, 1),
        "out": str(args.out or tempfile.gettempdir()),
        "throughput": runs,
        "coverage": {"synthetic": synthetic, "corpus": real},
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
