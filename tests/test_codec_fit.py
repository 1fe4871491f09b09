"""Codec fit per language: the measures, the seeded sample (without a model), and `snakemake codec_fit` itself."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import clip

from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
from neucodec_workflow.quality.codec_fit import log_mel_distance, sample_fits, si_sdr
from neucodec_workflow.record.contract import HOP, METADATA, SAMPLE_RATE, TAR, TOKENS, write_tokens

COLUMNS = {"segment_id": "segment_id", "language": "language"}


# --- the measures ----------------------------------------------------------------------------------------------------


def test_si_sdr_is_scale_invariant_and_falls_with_noise():
    rng = np.random.default_rng(0)
    x = clip(1.0, seed=3).astype(np.float32)
    noise = rng.standard_normal(len(x)).astype(np.float32)
    assert si_sdr(x, x) > 100  # identical: limited only by eps
    assert si_sdr(x, 0.25 * x) > 100 and si_sdr(x, -3.0 * x) > 100  # a scaled copy is as good as the signal
    noisy = x + 0.1 * float(np.std(x)) * noise  # 20 dB below the signal
    assert si_sdr(x, noisy) == pytest.approx(si_sdr(x, 7.0 * noisy), abs=1e-6)  # scale invariance
    assert si_sdr(x, noisy) == pytest.approx(20.0, abs=0.5)
    louder = x + float(np.std(x)) * noise  # 0 dB
    assert si_sdr(x, louder) < si_sdr(x, noisy) and si_sdr(x, louder) == pytest.approx(0.0, abs=0.5)
    assert si_sdr(x, noise) < -10  # unrelated signals
    assert math.isfinite(si_sdr(np.zeros(400), np.zeros(400)))  # silence stays finite
    with pytest.raises(ValueError):
        si_sdr(x, x[:-1])


def test_log_mel_distance_is_zero_for_identical_and_grows_with_distortion():
    x = clip(0.8, seed=5).astype(np.float32)
    rng = np.random.default_rng(1)
    small = x + 0.01 * float(np.std(x)) * rng.standard_normal(len(x)).astype(np.float32)
    large = x + 1.0 * float(np.std(x)) * rng.standard_normal(len(x)).astype(np.float32)
    assert log_mel_distance(x, x) == 0.0
    assert 0 < log_mel_distance(x, small) < log_mel_distance(x, large)
    assert log_mel_distance(x[:HOP], x[:HOP] * 0.5) > 0  # the shortest segment (one token) is measured too


# --- the sample, with a stand-in decoder -------------------------------------------------------------------------


def lang_shard(
    root: Path, shard: str, langs: list[str | None], seconds: float = 0.4, seed: int = 0, tokens: bool = True
) -> Path:
    """A shard whose segments have these languages (None: null); ``tokens``: and a token file (made-up tokens of the
    right count)."""
    members, rows, stored = [], [], []
    for i, lang in enumerate(langs):
        seg = f"{shard.replace('/', '_')}_{i:03d}"
        audio = clip(seconds, seed=seed + i)
        members.append(Member(f"{seg}.flac", flac_bytes(audio, SAMPLE_RATE)))
        rows.append({"segment_id": seg, "text": f"text {i}", "language": lang, "speaker": "s", "dataset": "d"})
        stored.append((seg, np.arange(len(audio) // HOP, dtype=np.uint16)))
    path = write_shard(root / shard, members, pd.DataFrame(rows))
    if tokens:
        write_tokens(path / TOKENS, stored, {"codec_id": "random", "random_weights": True, "seed": 0})
    return path


class Reads:
    """The readers sample_fits is given, counting which files they open."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def read(self, path: str) -> str:
        self.opened.append(path)
        return path

    def open_tar(self, path: str) -> nullcontext[str]:
        self.opened.append(path)
        return nullcontext(path)

    def shards_of(self, name: str) -> list[str]:
        return [str(Path(p).parent.name) for p in self.opened if p.endswith(name)]


def run_sample(root: Path, shards: list[str], per_language: int, seed: int = 0, decode=None) -> tuple[dict, Reads]:
    reads = Reads()
    fit = sample_fits(
        shards=shards,
        tars=[str(root / s / TAR) for s in shards],
        metadata=[str(root / s / METADATA) for s in shards],
        tokens=[str(root / s / TOKENS) for s in shards],
        columns=COLUMNS,
        segments_per_language=per_language,
        seed=seed,
        max_seconds=60,
        decode=decode or (lambda tokens: clip(len(tokens) * HOP / SAMPLE_RATE, seed=99)),
        read=reads.read,
        open_tar_source=reads.open_tar,
        metadata_workers=1,
    )
    return fit, reads


def test_sample_covers_every_language_reads_few_shards_and_is_seeded(tmp_path):
    lang_shard(tmp_path, "s0", ["en", "en", "de", None], seed=0)
    lang_shard(tmp_path, "s1", ["en", "fr", "fr"], seed=10)
    lang_shard(tmp_path, "s2", ["en", "en", "en"], seed=20)
    lang_shard(tmp_path, "s3", ["de", "en"], seed=30)
    shards = ["s0", "s1", "s2", "s3"]
    fit, reads = run_sample(tmp_path, shards, per_language=2)
    langs = fit["languages"]
    assert set(langs) == {"en", "de", "fr", "unknown"}
    assert {k: v["segments"] for k, v in langs.items()} == {"en": 2, "de": 2, "fr": 2, "unknown": 1}
    assert {k: v["in_metadata"] for k, v in langs.items()} == {"en": 7, "de": 2, "fr": 2, "unknown": 1}
    for lang in langs.values():
        assert lang["n"] == lang["segments"] and lang["failed"] == 0
        assert math.isfinite(lang["mean_log_mel_distance"]) and math.isfinite(lang["mean_si_sdr_db"])
        for seg in lang["per_segment"]:
            assert seg["shard"] in lang["shards"] and seg["seconds"] == pytest.approx(0.4)
    # every metadata file is read; token files and tars only of the shards that added a segment, each once
    assert sorted(set(reads.shards_of(METADATA))) == shards
    used = sorted({s for lang in langs.values() for s in lang["shards"]})
    assert fit["shards_read"] == reads.shards_of(TOKENS) and sorted(fit["shards_read"]) == used
    assert reads.shards_of(TAR) == fit["shards_read"]
    # seed 0 reads s1 (en, fr fr), s3 (de, en), s0 (de, unknown): then every language is full, and s2 (only English)
    # is never opened
    assert fit["shards_read"] == ["s1", "s3", "s0"] and "s2" not in reads.shards_of(TAR) + reads.shards_of(TOKENS)
    again, _ = run_sample(tmp_path, shards, per_language=2)
    assert again == fit  # seeded: the same sample
    other = [run_sample(tmp_path, shards, per_language=2, seed=s)[0] for s in (1, 2, 3)]
    picked = {
        json.dumps({k: [x["segment_id"] for x in v["per_segment"]] for k, v in o["languages"].items()}) for o in other
    }
    assert len(picked) > 1  # another seed, another sample


def test_unmeasurable_segments_and_unreadable_shards_are_reported_not_fatal(tmp_path):
    s0 = lang_shard(tmp_path, "s0", ["en", "en"], seed=0)
    lang_shard(tmp_path, "s1", ["de"], seed=5)
    (tmp_path / "s1" / TAR).write_bytes(b"not a tar" * 100)
    lang_shard(tmp_path, "s2", ["de"], seed=6)
    (tmp_path / "s2" / TOKENS).write_bytes(b"PAR1 but not parquet")
    # s0's first member is gone from the tar (its token row and metadata stay)
    write_shard(s0, [Member("s0_001.flac", flac_bytes(clip(0.4, seed=1), SAMPLE_RATE))], pd.read_parquet(s0 / METADATA))

    fit, _ = run_sample(tmp_path, ["s0", "s1", "s2"], per_language=2)
    en, de = fit["languages"]["en"], fit["languages"]["de"]
    assert en["segments"] == 2 and en["n"] == 1 and en["failed"] == 1
    missing = next(s for s in en["per_segment"] if "reason" in s)
    assert missing["segment_id"] == "s0_000" and missing["shard"] == "s0" and "missing_from_tar" in missing["reason"]
    assert de["segments"] == 1 and de["n"] == 0 and de["mean_si_sdr_db"] is None
    assert "audio.tar" in de["per_segment"][0]["reason"] and de["per_segment"][0]["shard"] == "s1"
    errors = {e["shard"]: e["reason"] for e in fit["shard_errors"]}
    assert set(errors) == {"s1", "s2"} and errors["s1"].startswith("audio.tar: ")
    assert errors["s2"].startswith("neucodec_tokens.parquet: ")  # that shard adds nothing; the sample goes on

    def broken(tokens):
        raise RuntimeError("decoder exploded")

    fit, _ = run_sample(tmp_path, ["s0"], per_language=2, decode=broken)
    seg = next(s for s in fit["languages"]["en"]["per_segment"] if s["segment_id"] == "s0_001")
    assert "decoder exploded" in seg["reason"] and seg["tokens"] == 20


# The rule itself runs in tests/test_report.py: the demo corpus with codec_fit.enabled, then the HTML report.
