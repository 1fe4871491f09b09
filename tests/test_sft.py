"""SFT dataset assembly: join, layout, card, load_dataset (also streaming), speaker splits, stats."""

import json

import numpy as np
import pandas as pd
import pytest

from neucodec_workflow.contract import write_tokens
from neucodec_workflow.dataset.sft import SftError, assemble_sft, speaker_split
from neucodec_workflow.dataset.stats import corpus_stats

MAPPING = {
    "segment_id": "segment_id",
    "text": ["text", "transcript"],
    "language": "language",
    "speaker": "speaker",
    "duration": "duration",
    "dataset": "dataset",
}


def make_shard(root, shard, n, text_column="text", speakers=4, drop=()):
    d = root / shard
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(shard))
    ids = [f"{shard.replace('/', '_')}_{i}" for i in range(n)]
    meta = pd.DataFrame(
        {
            "segment_id": ids,
            text_column: [f"text {i}" for i in range(n)],
            "language": "en" if shard.startswith("a") else "de",
            "speaker": [f"s{i % speakers}" for i in range(n)],
            "duration": [1.0 + i for i in range(n)],
            "dataset": "ds",
        }
    )
    meta.to_parquet(d / "metadata.parquet")
    rows = [(i, rng.integers(0, 65536, size=10 + k).astype(np.uint16)) for k, i in enumerate(ids) if i not in drop]
    write_tokens(d / "neucodec_tokens.parquet", rows, {"codec_id": "random", "random_weights": True, "seed": 0})
    return rows


@pytest.fixture
def corpus(tmp_path):
    rows = {
        "a/s0": make_shard(tmp_path, "a/s0", 30),
        "b/s1": make_shard(tmp_path, "b/s1", 25, text_column="transcript", drop={"b_s1_3"}),
    }
    return tmp_path, rows


def assemble(root, shards, out, **kw):
    settings = {"validation_fraction": 0.0, "target_file_mb": 500, "rows_per_row_group": 20_000, **kw}
    return assemble_sft(
        shards,
        lambda s: str(root / s / "neucodec_tokens.parquet"),
        lambda s: str(root / s / "metadata.parquet"),
        out,
        MAPPING,
        **settings,
    )


def test_dataset_loads_with_datasets_also_streaming(corpus, tmp_path):
    from datasets import List, Value, load_dataset

    root, rows = corpus
    out = tmp_path / "out" / "sft_dataset"
    summary = assemble(root, ["a/s0", "b/s1"], out, rows_per_row_group=7)
    assert summary["train"]["num_examples"] == 54 and "validation" not in summary
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == ["train-00000-of-00001.parquet"]
    assert not list(out.parent.glob(".*tmp*"))
    ds = load_dataset(str(out), split="train")
    assert ds.features["neucodec_tokens"] == List(Value("uint16"))
    assert len(ds) == 54
    by_id = {r["segment_id"]: r for r in ds}
    for shard_rows in rows.values():
        for seg, tokens in shard_rows:
            assert by_id[seg]["neucodec_tokens"] == tokens.tolist()
            assert by_id[seg]["token_count"] == len(tokens)
    assert by_id["b_s1_4"]["text"] == "text 4"  # mapped from `transcript`
    assert by_id["a_s0_2"]["duration"] == 3.0 and by_id["a_s0_2"]["speaker"] == "s2"
    streamed = next(iter(load_dataset(str(out), split="train", streaming=True)))
    assert streamed["segment_id"] == "a_s0_0" and isinstance(streamed["neucodec_tokens"], list)
    card = (out / "README.md").read_text()
    assert "list: uint16" in card and "data/train-*" in card and "RANDOM test weights" in card
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out / "data" / files[0]).metadata.num_row_groups >= 8  # explicit row groups of 7 rows


def test_files_roll_over_at_target_size(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "sft"
    summary = assemble(root, ["a/s0", "b/s1"], out, target_file_mb=1e-4, rows_per_row_group=5)
    names = sorted(p.name for p in (out / "data").iterdir())
    assert len(names) == summary["train"]["files"] > 1
    assert all(n.endswith(f"-of-{len(names):05d}.parquet") for n in names)


def test_speaker_split_is_deterministic_and_disjoint(corpus, tmp_path):
    from datasets import load_dataset

    root, _ = corpus
    out = tmp_path / "sft"
    summary = assemble(root, ["a/s0", "b/s1"], out, validation_fraction=0.5)
    assert set(summary) == {"train", "validation"}
    ds = load_dataset(str(out))
    train = {(r["dataset"], r["speaker"]) for r in ds["train"]}
    val = {(r["dataset"], r["speaker"]) for r in ds["validation"]}
    assert train and val and not train & val
    assert speaker_split("ds", "s1", "x", 0.5) == speaker_split("ds", "s1", "y", 0.5)


def test_missing_text_column_names_the_shard(tmp_path):
    make_shard(tmp_path, "c/s2", 3, text_column="words")
    with pytest.raises(SftError, match=r"shard c/s2: .*\['text', 'transcript'\].*columns.text"):
        assemble(tmp_path, ["c/s2"], tmp_path / "out")


def test_stats_totals_and_groups(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "sft"
    assemble(root, ["a/s0", "b/s1"], out)
    reports = [
        {
            "segments": 31,
            "encoded": 30,
            "rejected_count": 1,
            "rejects_by_reason": {"decode_error": 1},
            "audio_seconds": 36.0,
            "tokens": 1800,
            "wall_seconds": 12.0,
            "codec": {"random_weights": True},
        },
        {
            "segments": 25,
            "encoded": 24,
            "rejected_count": 1,
            "rejects_by_reason": {"decode_error": 1},
            "audio_seconds": 36.0,
            "tokens": 1800,
            "wall_seconds": 6.0,
            "codec": {"random_weights": True},
        },
    ]
    stats = corpus_stats(reports, out)
    assert stats["rejects_by_reason"] == {"decode_error": 2} and stats["hours"] == pytest.approx(0.02)
    assert stats["audio_seconds_per_wall_second"] == pytest.approx(4.0)
    assert set(stats["per_language"]) == {"en", "de"} and stats["per_dataset"]["ds"]["segments"] == 54
    json.dumps(stats)


def test_rows_without_text_or_with_bad_duration_are_excluded_and_counted(tmp_path):
    """Each encoded segment is a dataset row or is listed with its reason; nothing is written with a null text or a
    made-up duration."""
    from datasets import load_dataset

    d = tmp_path / "e" / "s0"
    d.mkdir(parents=True)
    meta = pd.DataFrame(
        {
            "segment_id": [
                "ok",
                "ok_no_duration",
                "null_text",
                "blank_text",
                "bad_duration",
                "negative",
                "dup_meta",
                "dup_meta",
            ],
            "text": ["hello", "hi", None, "   ", "x", "y", "z", "z"],
            "duration": ["1.5", None, "1", "1", "1,5 s", "-2", "1", "1"],
        }
    )
    meta.to_parquet(d / "metadata.parquet")
    ids = ["ok", "ok_no_duration", "null_text", "blank_text", "bad_duration", "negative", "dup_meta", "orphan", "ok"]
    write_tokens(d / "neucodec_tokens.parquet", [(i, np.arange(5 + k, dtype=np.uint16)) for k, i in enumerate(ids)], {})
    out = tmp_path / "sft"
    summary = assemble(tmp_path, ["e/s0"], out)
    assert summary["train"]["num_examples"] == 2
    rows = {r["segment_id"]: r for r in load_dataset(str(out), split="train")}
    assert rows["ok"]["duration"] == 1.5 and rows["ok"]["token_count"] == 5  # the first of the duplicate rows
    assert rows["ok_no_duration"]["duration"] == pytest.approx(6 * 0.02)  # missing: the encoded length
    excluded = json.loads((out / "excluded.json").read_text())
    reasons = {(r["segment_id"], r["reason"]) for r in excluded["segments"]}
    assert reasons == {
        ("null_text", "no_text"),
        ("blank_text", "no_text"),
        ("bad_duration", "unparseable_duration"),
        ("negative", "unparseable_duration"),
        ("dup_meta", "duplicate_in_metadata"),
        ("orphan", "not_in_metadata"),
        ("ok", "duplicate_in_tokens"),
    }
    assert all(r["shard"] == "e/s0" for r in excluded["segments"])
    assert excluded["excluded_by_reason"] == {
        "duplicate_in_metadata": 1,
        "duplicate_in_tokens": 1,
        "no_text": 2,
        "not_in_metadata": 1,
        "unparseable_duration": 2,
    }
    assert len(rows) + excluded["excluded"] == len(ids)  # every encoded row accounted for
    assert "left out" in (out / "README.md").read_text()
    stats = corpus_stats([], out)
    assert stats["sft_excluded_by_reason"] == excluded["excluded_by_reason"]


def test_dataset_side_does_not_import_torch():
    """The dataset rules' environment has no torch (envs/dataset.yaml)."""
    import subprocess
    import sys

    code = (
        "import sys, neucodec_workflow.dataset.sft, neucodec_workflow.dataset.stats, neucodec_workflow.jobs, "
        "neucodec_workflow.storage.streams; print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
