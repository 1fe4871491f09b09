"""What is derived from a shard's token file (the record) and its metadata: the shard's report and its parts of the
SFT dataset; then the card, the index and the stats from the reports alone. The dataset loads with
``datasets.load_dataset`` (also streaming); exclusions are listed by reason; splits are by speaker."""

import hashlib
import io
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neucodec_workflow.dataset.derive import FOREIGN, WITHOUT_REPORT, WORKFLOW, derive_shard
from neucodec_workflow.dataset.sft import SCHEMA as SFT_SCHEMA
from neucodec_workflow.dataset.sft import SftError, part_path, speaker_split
from neucodec_workflow.dataset.stats import corpus_stats, dataset_card, dataset_index
from neucodec_workflow.record.contract import (
    PROVENANCE_KEY,
    REPORT_KEY,
    SCHEMA,
    SECONDS_PER_TOKEN,
    footer,
    read_provenance,
    read_report,
    write_json,
    write_text,
    write_tokens,
)
from neucodec_workflow.record.records import Reason, Reject, ShardReport

MAPPING = {
    "segment_id": "segment_id",
    "text": ["text", "transcript"],
    "language": "language",
    "speaker": "speaker",
    "duration": "duration",
    "dataset": "dataset",
}
PROVENANCE = {"codec_id": "random", "random_weights": True, "seed": 0, "revision": "r1"}
DERIVED = ("record", "provenance", "token_file", "sft")  # what derive_shard adds to the encode job's report


def encode_report(shard: str, ids: list[str], rows: list[tuple[str, np.ndarray]], wall: float) -> dict:
    """A report as the encode job makes it: the metadata ids without tokens are rejected (missing from the tar)."""
    encoded = {i for i, _ in rows}
    report = ShardReport(shard=shard, codec=PROVENANCE, encoder="reference", device="cpu")
    report.segments_in_metadata = len(set(ids))
    report.segments_in_tar = len(rows)
    report.encoded = len(rows)
    report.tokens = sum(len(t) for _, t in rows)
    report.audio_seconds = report.tokens * SECONDS_PER_TOKEN
    report.wall_seconds = wall
    report.rejected = [Reject(i, Reason.MISSING_FROM_TAR, "no member") for i in sorted(set(ids) - encoded)]
    return report.as_dict()


def make_shard(
    root: Path,
    shard: str,
    n: int,
    *,
    text_column: str = "text",
    speakers: int = 4,
    drop: tuple[str, ...] = (),
    with_report: bool = True,
    wall: float = 2.0,
) -> dict[str, np.ndarray]:
    """A shard directory with metadata.parquet and a token file written by the workflow (its report inside); returns
    the tokens of each encoded segment."""
    d = root / shard
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(shard) + n)
    ids = [f"{shard.replace('/', '_')}_{i}" for i in range(n)]
    pd.DataFrame(
        {
            "segment_id": ids,
            text_column: [f"text {i}" for i in range(n)],
            "language": "en" if shard.startswith("a") else "de",
            "speaker": [f"s{i % speakers}" for i in range(n)],
            "duration": [1.0 + i for i in range(n)],
            "dataset": "ds",
        }
    ).to_parquet(d / "metadata.parquet")
    rows = [(i, rng.integers(0, 65536, size=10 + k).astype(np.uint16)) for k, i in enumerate(ids) if i not in drop]
    report = (lambda: encode_report(shard, ids, rows, wall)) if with_report else None
    write_tokens(d / "neucodec_tokens.parquet", rows, PROVENANCE, report=report)
    return dict(rows)


def write_foreign(path: Path, rows: list[tuple[str, bytes, int]]) -> None:
    """A token file made by another tool: the contract's three columns, no key-value metadata at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids, blobs, counts = zip(*rows, strict=True)
    table = pa.table(
        {"segment_id": list(ids), "neucodec_tokens": list(blobs), "token_count": pa.array(counts, pa.int32())}
    )
    pq.write_table(table, path)


def derive(root: Path, shard: str, out: Path, *, splits=("train",), validation_fraction=0.0, rows_per_row_group=500):
    """derive_shard as the workflow calls it: report at ``shards/{shard}.json``, parts at
    ``sft/data/{split}/{shard}.parquet``."""
    return derive_shard(
        shard,
        root / shard / "neucodec_tokens.parquet",
        root / shard / "metadata.parquet",
        MAPPING,
        report_path=out / "shards" / f"{shard}.json",
        parts={"hf": {split: out / "sft" / part_path(split, shard) for split in splits}},
        validation_fraction=validation_fraction,
        rows_per_row_group=rows_per_row_group,
    )


def summarize(out: Path, reports: list[dict]) -> tuple[Path, dict]:
    """What rule summarize writes from the reports: stats.json, the card and the index."""
    stats = corpus_stats(reports)
    write_json(out / "stats.json", stats)
    write_text(out / "sft" / "README.md", dataset_card(reports, stats))
    write_json(out / "sft" / "index.json", dataset_index(reports))
    return out / "sft", stats


def build(root: Path, shards: list[str], out: Path, **kw) -> tuple[Path, list[dict], dict]:
    reports = [derive(root, s, out, **kw) for s in shards]
    sft, stats = summarize(out, reports)
    return sft, reports, stats


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    tokens = {
        "a/s0": make_shard(root, "a/s0", 30),
        "b/s1": make_shard(root, "b/s1", 25, text_column="transcript", drop=("b_s1_3",)),
        "c": make_shard(root, "c", 6, wall=0.0),  # a shard at the top level: its parts are data/{split}/c.parquet
    }
    return root, tokens


def test_dataset_loads_with_datasets_also_streaming(corpus, tmp_path):
    from datasets import List, Value, load_dataset

    root, tokens = corpus
    out = tmp_path / "out"
    sft, reports, _ = build(root, list(tokens), out, rows_per_row_group=7)
    expected = {seg: t for shard_tokens in tokens.values() for seg, t in shard_tokens.items()}
    assert sorted(p.relative_to(sft).as_posix() for p in sft.rglob("*.parquet")) == [
        "data/train/a/s0.parquet",
        "data/train/b/s1.parquet",
        "data/train/c.parquet",
    ]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for shard, report in zip(tokens, reports, strict=True):
        assert report["record"] == WORKFLOW and report["shard"] == shard
        assert json.loads((out / "shards" / f"{shard}.json").read_text()) == report
        assert report["sft"]["rows_per_split"] == {"train": len(tokens[shard])}

    ds = load_dataset(str(sft), split="train")
    assert ds.features["neucodec_tokens"] == List(Value("uint16"))
    assert len(ds) == len(expected)
    by_id = {r["segment_id"]: r for r in ds}
    assert set(by_id) == set(expected)
    for seg, row in by_id.items():
        assert row["neucodec_tokens"] == expected[seg].tolist()
        assert row["token_count"] == len(expected[seg])
    table = ds.with_format("arrow")[:]  # the stored column: uint16, no widening on the way
    assert table.schema.field("neucodec_tokens").type == pa.list_(pa.uint16())
    column = table["neucodec_tokens"].combine_chunks()
    for i, seg in enumerate(table["segment_id"].to_pylist()):
        got = column[i].values.to_numpy()
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected[seg])
    assert by_id["b_s1_4"]["text"] == "text 4"  # mapped from `transcript`
    assert by_id["a_s0_2"]["duration"] == 3.0 and by_id["a_s0_2"]["speaker"] == "s2"
    assert by_id["b_s1_4"]["shard"] == "b/s1" and by_id["c_5"]["shard"] == "c"
    assert by_id["a_s0_0"]["language"] == "en" and by_id["b_s1_0"]["language"] == "de"

    streamed = list(load_dataset(str(sft), split="train", streaming=True))
    assert {r["segment_id"] for r in streamed} == set(expected)
    first = streamed[0]
    assert (
        isinstance(first["neucodec_tokens"], list)
        and first["neucodec_tokens"] == expected[first["segment_id"]].tolist()
    )

    card = (sft / "README.md").read_text()
    assert "list: uint16" in card and "data/train/**/*.parquet" in card and "RANDOM test weights" in card
    assert f"| train | {len(expected)} |" in card
    # explicit row groups of 7 rows
    assert pq.ParquetFile(sft / "data/train/a/s0.parquet").metadata.num_row_groups == math.ceil(30 / 7)


def test_index_lists_every_part_with_its_size_and_digest(corpus, tmp_path):
    root, tokens = corpus
    sft, reports, _ = build(
        root, list(tokens), tmp_path / "out", splits=("train", "validation"), validation_fraction=0.5
    )
    index = json.loads((sft / "index.json").read_text())
    paths = [p["path"] for p in index["parts"]]
    assert paths == sorted(paths) and len(paths) == len(tokens) * 2
    assert {(p["shard"], p["split"]) for p in index["parts"]} == {
        (s, x) for s in tokens for x in ("train", "validation")
    }
    for p in index["parts"]:
        assert p["path"] == f"data/{p['split']}/{p['shard']}.parquet"
        data = (sft / p["path"]).read_bytes()
        assert p["bytes"] == len(data) and p["sha256"] == hashlib.sha256(data).hexdigest()
        assert p["rows"] == pq.ParquetFile(sft / p["path"]).metadata.num_rows
    assert sum(p["rows"] for p in index["parts"]) == sum(len(t) for t in tokens.values())
    assert {p["path"] for p in index["parts"]} == {p.relative_to(sft).as_posix() for p in sft.rglob("*.parquet")}


def test_speaker_split_is_deterministic_and_disjoint(corpus, tmp_path):
    from datasets import load_dataset

    root, tokens = corpus
    kw = {"splits": ("train", "validation"), "validation_fraction": 0.5}
    sft, reports, stats = build(root, list(tokens), tmp_path / "one", **kw)
    again, _, _ = build(root, list(tokens), tmp_path / "two", **kw)
    assert (sft / "index.json").read_text() == (again / "index.json").read_text()  # same rows, same bytes
    ds = load_dataset(str(sft))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) + len(ds["validation"]) == sum(len(t) for t in tokens.values())
    assert stats["sft_rows_per_split"] == {"train": len(ds["train"]), "validation": len(ds["validation"])}
    train = {(r["dataset"], r["speaker"]) for r in ds["train"]}
    val = {(r["dataset"], r["speaker"]) for r in ds["validation"]}
    assert train and val and not train & val
    for split in ("train", "validation"):
        for r in ds[split]:
            assert speaker_split(r["dataset"], r["speaker"], r["segment_id"], 0.5) == split
    assert speaker_split("ds", "s1", "x", 0.5) == speaker_split("ds", "s1", "y", 0.5)
    # without a speaker, the segment id decides: over many ids both splits occur, and each id always lands the same
    by_segment = {speaker_split("ds", None, f"seg{i}", 0.5) for i in range(64)}
    assert by_segment == {"train", "validation"}
    assert [speaker_split("ds", None, f"seg{i}", 0.5) for i in range(64)] == [
        speaker_split("ds", None, f"seg{i}", 0.5) for i in range(64)
    ]
    assert {speaker_split("ds", f"s{i}", "x", 0.0) for i in range(64)} == {"train"}


def test_rows_without_a_speaker_are_split_by_segment_id(tmp_path):
    root = tmp_path / "corpus"
    d = root / "n" / "s0"
    d.mkdir(parents=True)
    ids = [f"seg{i}" for i in range(40)]
    pd.DataFrame({"segment_id": ids, "text": "hi", "speaker": [None] * 20 + ["s"] * 20}).to_parquet(
        d / "metadata.parquet"
    )
    write_tokens(d / "neucodec_tokens.parquet", [(i, np.arange(3, dtype=np.uint16)) for i in ids], PROVENANCE)
    out = tmp_path / "out"
    report = derive(root, "n/s0", out, splits=("train", "validation"), validation_fraction=0.5)
    assert sum(report["sft"]["rows_per_split"].values()) == len(ids)
    split_of = {
        seg: split
        for split in ("train", "validation")
        for seg in pd.read_parquet(out / "sft" / part_path(split, "n/s0"))["segment_id"]
    }
    assert sorted(split_of) == sorted(ids)
    assert len({split_of[i] for i in ids[20:]}) == 1  # one speaker: one split
    assert [split_of[i] for i in ids[:20]] == [speaker_split(None, None, i, 0.5) for i in ids[:20]]
    assert len({split_of[i] for i in ids[:20]}) == 2  # by segment id: both splits (fixed by the hash)


def test_missing_text_column_names_the_shard(tmp_path):
    make_shard(tmp_path, "c/s2", 3, text_column="words")
    with pytest.raises(SftError, match=r"shard c/s2: .*\['text', 'transcript'\].*columns.text"):
        derive(tmp_path, "c/s2", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # neither a report nor a part


def test_missing_segment_id_column_names_the_shard(tmp_path):
    make_shard(tmp_path, "c/s3", 3)
    meta = pd.read_parquet(tmp_path / "c/s3/metadata.parquet").rename(columns={"segment_id": "id"})
    meta.to_parquet(tmp_path / "c/s3/metadata.parquet")
    with pytest.raises(SftError, match=r"shard c/s3: .*\['segment_id'\].*'segment_id'.*columns.segment_id"):
        derive(tmp_path, "c/s3", tmp_path / "out")


def test_stats_totals_and_groups(corpus, tmp_path):
    root, tokens = corpus
    write_foreign(
        root / "f/s9" / "neucodec_tokens.parquet",
        [("f_0", np.arange(50, dtype="<u2").tobytes(), 50), ("f_1", np.arange(5, dtype="<u2").tobytes(), 4)],
    )
    pd.DataFrame({"segment_id": ["f_0", "f_1"], "text": ["a", "b"], "language": ["fr", None]}).to_parquet(
        root / "f/s9" / "metadata.parquet"
    )
    shards = [*tokens, "f/s9"]
    sft, reports, stats = build(root, shards, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    n_rows = sum(len(t) for t in tokens.values()) + 1  # f_1's token count does not match its bytes
    assert stats["shards"] == 4 and stats["records"] == {FOREIGN: 1, WORKFLOW: 3}
    assert stats["segments"] == 30 + 25 + 6 + 2 and stats["encoded"] == 30 + 24 + 6 + 2
    assert stats["rejected"] == 1 and stats["rejects_by_reason"] == {str(Reason.MISSING_FROM_TAR): 1}
    workflow_tokens = sum(len(t) for shard_tokens in tokens.values() for t in shard_tokens.values())
    assert stats["tokens"] == workflow_tokens + 50 + 4  # the foreign file's token_count column, as it is
    assert stats["audio_hours"] == pytest.approx((workflow_tokens + 54) * SECONDS_PER_TOKEN / 3600)
    assert "hours" not in stats  # two meanings, two names: all encoded audio here, dataset rows per language
    assert stats["token_count_mismatches"] == 1
    assert stats["sft_excluded_by_reason"] == {str(Reason.TOKEN_COUNT_MISMATCH): 1}
    # speed from the shards that were timed: a/s0 and b/s1 (2 s each); c (0 s) and the foreign shard are not
    timed = sum(len(t) for s in ("a/s0", "b/s1") for t in tokens[s].values()) * SECONDS_PER_TOKEN
    assert stats["encode_wall_seconds"] == pytest.approx(4.0)
    assert stats["audio_seconds_per_wall_second"] == pytest.approx(timed / 4.0)
    assert stats["random_weights"] is True
    assert stats["sft_rows_per_split"] == {"train": n_rows}
    assert set(stats["per_language"]) == {"en", "de", "fr"}
    assert stats["per_language"]["en"]["segments"] == 30 and stats["per_language"]["de"]["segments"] == 24 + 6
    assert stats["per_language"]["fr"] == {
        "segments": 1,
        "tokens": 50,
        "dataset_hours": pytest.approx(50 * 0.02 / 3600),
    }
    assert stats["per_dataset"]["ds"]["segments"] == n_rows - 1
    assert stats["per_dataset"]["unknown"]["segments"] == 1  # no dataset column in the foreign shard's metadata
    assert sum(g["tokens"] for g in stats["per_dataset"].values()) == workflow_tokens + 50
    card = (sft / "README.md").read_text()
    assert "3 workflow" in card and "1 foreign" in card and "| fr | 1 |" in card
    assert str(Reason.TOKEN_COUNT_MISMATCH) in card
    json.dumps(stats)


def test_rows_without_text_or_with_bad_duration_are_excluded_and_counted(tmp_path):
    """Each encoded segment is a dataset row or is listed with its reason; nothing is written with a null text or a
    made-up duration."""
    from datasets import load_dataset

    root = tmp_path / "corpus"
    d = root / "e" / "s0"
    d.mkdir(parents=True)
    pd.DataFrame(
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
    ).to_parquet(d / "metadata.parquet")
    ids = ["ok", "ok_no_duration", "null_text", "blank_text", "bad_duration", "negative", "dup_meta", "orphan", "ok"]
    # a workflow token file written before reports travelled inside: provenance, no report
    write_tokens(
        d / "neucodec_tokens.parquet", [(i, np.arange(5 + k, dtype=np.uint16)) for k, i in enumerate(ids)], PROVENANCE
    )
    out = tmp_path / "out"
    sft, [report], stats = build(root, ["e/s0"], out)
    assert report["record"] == WITHOUT_REPORT and report["shard"] == "e/s0"
    assert report["codec"] == PROVENANCE and report["provenance"] == PROVENANCE
    assert report["sft"]["rows_per_split"] == {"train": 2}
    rows = {r["segment_id"]: r for r in load_dataset(str(sft), split="train")}
    assert set(rows) == {"ok", "ok_no_duration"}
    assert rows["ok"]["duration"] == 1.5 and rows["ok"]["token_count"] == 5  # the first of the duplicate rows
    assert rows["ok_no_duration"]["duration"] == pytest.approx(6 * SECONDS_PER_TOKEN)  # missing: the encoded length
    reasons = {(r["segment_id"], r["reason"]) for r in report["sft"]["excluded"]}
    assert reasons == {
        ("null_text", "no_text"),
        ("blank_text", "no_text"),
        ("bad_duration", "unparseable_duration"),
        ("negative", "unparseable_duration"),
        ("dup_meta", "duplicate_in_metadata"),
        ("orphan", "not_in_metadata"),
        ("ok", "duplicate_in_tokens"),
    }
    assert report["sft"]["excluded_by_reason"] == {
        "duplicate_in_metadata": 1,
        "duplicate_in_tokens": 1,
        "no_text": 2,
        "not_in_metadata": 1,
        "unparseable_duration": 2,
    }
    assert len(rows) + len(report["sft"]["excluded"]) == len(ids)  # every encoded row accounted for
    assert json.loads((out / "shards" / "e/s0.json").read_text())["sft"]["excluded"] == report["sft"]["excluded"]
    assert "left out" in (sft / "README.md").read_text()
    assert stats["sft_excluded_by_reason"] == report["sft"]["excluded_by_reason"]
    assert stats["records"] == {WITHOUT_REPORT: 1}
    # without an encode report: the file's distinct ids are encoded, the metadata ids without a row rejected (none)
    assert report["encoded"] == len(set(ids)) and report["rejected_count"] == 0
    assert report["segments"] == len(set(ids) | {"dup_meta"})


def test_foreign_token_file_is_adopted_as_it_is(tmp_path):
    """Another tool's token file: no provenance, no report. The report is reconstructed from the file and the
    metadata; a row whose token_count does not match its bytes is left out of the dataset."""
    root = tmp_path / "corpus"
    shard = "x/foreign"
    good = {f"g{i}": np.arange(i, i + 7 + i, dtype=np.uint16) for i in range(4)}
    rows = [(k, v.astype("<u2").tobytes(), len(v)) for k, v in good.items()]
    rows.insert(2, ("bad_count", np.arange(6, dtype="<u2").tobytes(), 5))
    write_foreign(root / shard / "neucodec_tokens.parquet", rows)
    assert footer(root / shard / "neucodec_tokens.parquet").get(PROVENANCE_KEY) is None
    meta_ids = [*good, "bad_count", "never_encoded"]
    pd.DataFrame({"segment_id": meta_ids, "text": [f"t {i}" for i in meta_ids], "speaker": "s"}).to_parquet(
        root / shard / "metadata.parquet"
    )
    out = tmp_path / "out"
    report = derive(root, shard, out)
    assert report["record"] == FOREIGN and report["shard"] == shard
    assert report["provenance"] == {} and report["codec"] == {}
    assert report["segments"] == len(meta_ids) and report["segments_in_metadata"] == len(meta_ids)
    assert report["encoded"] == len(rows) and report["rejected_count"] == 1
    assert report["encoded"] + report["rejected_count"] == report["segments"]
    assert [(r["segment_id"], r["reason"]) for r in report["rejected"]] == [("never_encoded", str(Reason.NO_TOKENS))]
    assert report["rejects_by_reason"] == {str(Reason.NO_TOKENS): 1}
    assert report["tokens"] == sum(c for _, _, c in rows)
    assert report["audio_seconds"] == pytest.approx(report["tokens"] * SECONDS_PER_TOKEN)
    assert report["wall_seconds"] is None
    token_file = root / shard / "neucodec_tokens.parquet"
    assert report["token_file"] == {
        "rows": len(rows),
        "tokens": sum(c for _, _, c in rows),
        "bytes": token_file.stat().st_size,
        "mtime": token_file.stat().st_mtime,
        "token_count_mismatches": 1,
    }
    assert [(r["segment_id"], r["reason"]) for r in report["sft"]["excluded"]] == [
        ("bad_count", str(Reason.TOKEN_COUNT_MISMATCH))
    ]
    assert "12 bytes" in report["sft"]["excluded"][0]["detail"]
    part = pd.read_parquet(out / "sft" / part_path("train", shard))
    assert part["segment_id"].tolist() == list(good)
    for seg, tokens in zip(part["segment_id"], part["neucodec_tokens"], strict=True):
        np.testing.assert_array_equal(tokens, good[seg])
    assert json.loads((out / "shards" / f"{shard}.json").read_text()) == report
    assert corpus_stats([report])["records"] == {FOREIGN: 1}


def test_odd_byte_count_is_a_token_count_mismatch(tmp_path):
    root = tmp_path / "corpus"
    write_foreign(
        root / "o" / "neucodec_tokens.parquet",
        [("odd", b"\x01\x02\x03", 1), ("fine", np.arange(3, dtype="<u2").tobytes(), 3)],
    )
    pd.DataFrame({"segment_id": ["odd", "fine"], "text": ["a", "b"]}).to_parquet(root / "o" / "metadata.parquet")
    report = derive(root, "o", tmp_path / "out")
    assert report["token_file"]["token_count_mismatches"] == 1
    assert report["sft"]["excluded_by_reason"] == {str(Reason.TOKEN_COUNT_MISMATCH): 1}
    assert pd.read_parquet(tmp_path / "out" / "sft" / part_path("train", "o"))["segment_id"].tolist() == ["fine"]


def test_report_travels_inside_the_token_file(tmp_path):
    """write_tokens(report=...) puts the report in the key-value metadata once the last row is in; readers of the
    contract still see exactly its three columns; derive_shard copies the report."""
    root = tmp_path / "corpus"
    shard = "r/s0"
    ids = ["r0", "r1", "r2", "gone"]
    rows = [(i, np.arange(k + 2, dtype=np.uint16) * 1000) for k, i in enumerate(ids[:3])]
    pd.DataFrame({"segment_id": ids, "text": "words", "speaker": "s", "language": "en"}).to_parquet(
        tmp_path / "meta.parquet"
    )
    consumed: list[str] = []
    calls: list[list[str]] = []

    def produce():
        for seg, tokens in rows:
            consumed.append(seg)
            yield seg, tokens

    def report():
        calls.append(list(consumed))
        r = encode_report(shard, ids, rows, wall=1.5)
        r["audit"] = {"segments": 1, "tokens": 2, "matching_tokens": 2, "token_agreement": 1.0, "mismatched": []}
        return r

    path = root / shard / "neucodec_tokens.parquet"
    assert write_tokens(path, produce(), PROVENANCE, report=report, rows_per_group=2) == 3
    (root / shard / "metadata.parquet").write_bytes((tmp_path / "meta.parquet").read_bytes())
    assert calls == [["r0", "r1", "r2"]]  # called once, after the last row
    embedded = read_report(path)
    assert embedded == json.loads(json.dumps(report()))
    assert embedded["rejected"][0]["segment_id"] == "gone"
    assert read_provenance(path) == PROVENANCE
    assert set(footer(path)) >= {PROVENANCE_KEY, REPORT_KEY}
    df = pd.read_parquet(path)
    assert list(df.columns) == SCHEMA.names == ["segment_id", "neucodec_tokens", "token_count"]
    assert df["segment_id"].tolist() == ["r0", "r1", "r2"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 2

    derived = derive(root, shard, tmp_path / "out")
    assert derived["record"] == WORKFLOW
    assert {k: v for k, v in derived.items() if k not in DERIVED} == embedded
    assert derived["provenance"] == PROVENANCE
    assert derived["token_file"]["rows"] == 3 and derived["token_file"]["token_count_mismatches"] == 0
    assert derived["token_file"]["bytes"] == path.stat().st_size
    assert derived["sft"]["rows_per_split"] == {"train": 3}
    assert corpus_stats([derived])["audit"]["token_agreement"] == 1.0


def test_no_rows_is_a_valid_token_file_with_both_records(tmp_path):
    """A shard with nothing encodable still has its record: the contract's schema, zero rows, the provenance and
    the report in the key-value metadata."""
    path = tmp_path / "t.parquet"
    assert write_tokens(path, iter([]), PROVENANCE, report=lambda: {"encoded": 0}) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary file left
    assert pq.read_schema(path).remove_metadata() == SCHEMA and len(pd.read_parquet(path)) == 0
    assert read_provenance(path) == PROVENANCE and read_report(path) == {"encoded": 0}


def test_derive_reads_in_memory_sources_like_files(corpus, tmp_path):
    """The job hands derive_shard an object's bytes (S3): the same report and parts as from the paths."""
    root, _ = corpus
    from_paths = derive(root, "b/s1", tmp_path / "paths")
    token_bytes = (root / "b/s1/neucodec_tokens.parquet").read_bytes()
    from_memory = derive_shard(
        "b/s1",
        io.BytesIO(token_bytes),
        io.BytesIO((root / "b/s1/metadata.parquet").read_bytes()),
        MAPPING,
        report_path=tmp_path / "mem" / "report.json",
        parts={"hf": {"train": tmp_path / "mem" / "train.parquet"}},
        validation_fraction=0.0,
        rows_per_row_group=500,
        tokens_mtime=(root / "b/s1/neucodec_tokens.parquet").stat().st_mtime,  # the job gives an object's LastModified
    )
    assert from_memory == from_paths
    assert from_memory["token_file"]["bytes"] == len(token_bytes)
    assert (tmp_path / "mem" / "train.parquet").read_bytes() == (
        tmp_path / "paths" / "sft" / part_path("train", "b/s1")
    ).read_bytes()


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("missing_column", r"shard bad/s0: cannot read neucodec_tokens.parquet: .*\['token_count'\]"),
        ("not_parquet", r"shard bad/s0: cannot read neucodec_tokens.parquet: "),
        ("metadata_not_parquet", r"shard bad/s0: cannot read metadata.parquet: "),
    ],
)
def test_not_a_token_file_fails_naming_the_shard(tmp_path, kind, pattern):
    root = tmp_path / "corpus"
    make_shard(root, "bad/s0", 3)
    d = root / "bad/s0"
    if kind == "missing_column":
        pq.write_table(pa.table({"segment_id": ["a"], "neucodec_tokens": [b"\x00\x00"]}), d / "neucodec_tokens.parquet")
    elif kind == "not_parquet":
        (d / "neucodec_tokens.parquet").write_bytes(b"PAR1 this is not a parquet file")
    else:
        (d / "metadata.parquet").write_text("segment_id,text\na,b\n")
    with pytest.raises(SftError, match=pattern):
        derive(root, "bad/s0", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def empty_validation(tmp_path) -> tuple[Path, dict, list[dict], dict]:
    """Two shards and a validation fraction so small that no speaker falls in it: every validation part is empty."""
    root = tmp_path / "corpus"
    tokens = {**make_shard(root, "a/s0", 8), **make_shard(root, "b/s1", 5)}
    fraction = 1e-12
    assert all(speaker_split("ds", f"s{i}", "", fraction) == "train" for i in range(4))
    sft, reports, stats = build(
        root, ["a/s0", "b/s1"], tmp_path / "out", splits=("train", "validation"), validation_fraction=fraction
    )
    return sft, tokens, reports, stats


def test_zero_row_parts_are_written(tmp_path):
    sft, tokens, reports, stats = empty_validation(tmp_path)
    assert [r["sft"]["rows_per_split"] for r in reports] == [
        {"train": 8, "validation": 0},
        {"train": 5, "validation": 0},
    ]
    for shard in ("a/s0", "b/s1"):
        part = pq.read_table(sft / part_path("validation", shard))
        assert part.num_rows == 0 and part.schema.remove_metadata() == SFT_SCHEMA
    assert stats["sft_rows_per_split"] == {"train": len(tokens), "validation": 0}
    index = json.loads((sft / "index.json").read_text())
    assert {p["path"]: p["rows"] for p in index["parts"] if p["split"] == "validation"} == {
        "data/validation/a/s0.parquet": 0,
        "data/validation/b/s1.parquet": 0,
    }


EMPTY_PART_BUG = (
    "src bug: write_part (sft.py:160-161, pq.write_table) writes an empty part as ONE row group of 0 rows; datasets' "
    "parquet builder takes the first row group's num_rows as batch size -> ArrowInvalid 'BatchSize must be greater than "
    "0, got 0': load_dataset (non-streaming) fails for every split as soon as any part of the dataset is empty"
)


def test_zero_row_parts_load(tmp_path):
    """A shard with one speaker has an empty part in the other split: both splits load with exactly their rows."""
    from datasets import load_dataset

    root = tmp_path / "corpus"
    tokens = {**make_shard(root, "a/s0", 12, speakers=4), **make_shard(root, "b/s1", 5, speakers=1)}
    sft, reports, _ = build(
        root, ["a/s0", "b/s1"], tmp_path / "out", splits=("train", "validation"), validation_fraction=0.5
    )
    assert 0 in reports[1]["sft"]["rows_per_split"].values()  # b/s1: one speaker, one split
    assert 0 not in reports[0]["sft"]["rows_per_split"].values()
    meta = pd.concat(pd.read_parquet(root / s / "metadata.parquet") for s in ("a/s0", "b/s1"))
    expected = {"train": set(), "validation": set()}
    for seg, speaker in zip(meta["segment_id"], meta["speaker"], strict=True):
        expected[speaker_split("ds", speaker, seg, 0.5)].add(seg)
    assert expected["train"] and expected["validation"]
    for split, ids in expected.items():
        ds = load_dataset(str(sft), split=split)
        assert sorted(ds["segment_id"]) == sorted(ids)
        for row in ds:
            assert row["neucodec_tokens"] == tokens[row["segment_id"]].tolist()
        assert {r["segment_id"] for r in load_dataset(str(sft), split=split, streaming=True)} == ids


def test_a_split_of_only_empty_parts_does_not_break_the_others(tmp_path):
    from datasets import load_dataset

    sft, tokens, _, _ = empty_validation(tmp_path)
    assert sorted(load_dataset(str(sft), split="train")["segment_id"]) == sorted(tokens)
    assert sorted(r["segment_id"] for r in load_dataset(str(sft), split="train", streaming=True)) == sorted(tokens)


def test_dataset_with_an_empty_split_loads_as_a_whole(tmp_path):
    from datasets import load_dataset

    sft, tokens, _, _ = empty_validation(tmp_path)
    dataset = load_dataset(str(sft))
    assert sorted(dataset["train"]["segment_id"]) == sorted(tokens)
    assert len(dataset.get("validation", [])) == 0


def test_shard_whose_rows_are_all_left_out_has_an_empty_part(tmp_path):
    root = tmp_path / "corpus"
    d = root / "z/empty"
    d.mkdir(parents=True)
    pd.DataFrame({"segment_id": ["z0", "z1"], "text": [None, " "]}).to_parquet(d / "metadata.parquet")
    write_tokens(d / "neucodec_tokens.parquet", [("z0", np.arange(4)), ("z1", np.arange(2))], PROVENANCE)
    report = derive(root, "z/empty", tmp_path / "out")
    assert report["sft"]["rows_per_split"] == {"train": 0}
    assert report["sft"]["excluded_by_reason"] == {str(Reason.NO_TEXT): 2}
    part = pq.read_table(tmp_path / "out" / "sft" / part_path("train", "z/empty"))
    assert part.num_rows == 0 and part.schema.remove_metadata() == SFT_SCHEMA


def test_dataset_side_does_not_import_torch():
    """The dataset rules' environment has no torch (envs/dataset.yaml)."""
    import subprocess
    import sys

    code = (
        "import sys, neucodec_workflow.dataset.sft, neucodec_workflow.dataset.derive, neucodec_workflow.dataset.stats, "
        "neucodec_workflow.workflow.dataset_jobs, neucodec_workflow.storage.streams; print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def break_shard(d: Path, kind: str) -> None:
    """Spoil one shard's token file (or its metadata) the ways a file can be bad."""
    tokens = d / "neucodec_tokens.parquet"
    if kind == "not_parquet":
        tokens.write_bytes(b"PAR1 this is not a parquet file")
    elif kind == "truncated":
        tokens.write_bytes(tokens.read_bytes()[:-100])
    elif kind == "missing_column":
        pq.write_table(pa.table({"segment_id": ["a"], "neucodec_tokens": [b"\x00\x00"]}), tokens)
    elif kind == "unreadable_report":  # the key-value metadata holds a report that is no JSON
        table = pq.read_table(tokens)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, REPORT_KEY: b"{not json"}), tokens)
    else:
        (d / "metadata.parquet").write_text("segment_id,text\na,b\n")


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("not_parquet", r"cannot read neucodec_tokens\.parquet: "),
        ("truncated", r"cannot read neucodec_tokens\.parquet: "),
        ("missing_column", r"cannot read neucodec_tokens\.parquet: .*\['token_count'\]"),
        ("unreadable_report", r"cannot read neucodec_tokens\.parquet: JSONDecodeError"),
        ("metadata_not_parquet", r"cannot read metadata\.parquet: "),
    ],
)
def test_a_bad_token_file_does_not_cost_its_batch_the_other_shards(tmp_path, kind, reason):
    """A derive job (derive_batch_N: up to 100 shards) over a shard whose token file or metadata is bad makes the
    other shards' reports and parts and succeeds (Snakemake would remove every output of a failed job); the bad
    shard's report records why, with empty parts; summarize then refuses, naming it; after the fix (a newer token
    file or metadata) that shard alone is stale, and re-deriving it lets summarize through."""
    from neucodec_workflow.dataset.derive import FAILED, FailedShardsError, refuse_failed
    from neucodec_workflow.workflow.dataset_jobs import derive_job
    from neucodec_workflow.workflow.plan import stale

    root, out = tmp_path / "corpus", tmp_path / "out"
    shards = ["a/s0", "bad/s1", "c"]
    for n, shard in enumerate(shards):
        make_shard(root, shard, 6 + n)
    break_shard(root / "bad/s1", kind)
    sft = {"formats": ["hf"], "validation_fraction": 0.0, "rows_per_row_group": 100}

    def report_of(shard: str) -> Path:
        return out / "shards" / f"{shard}.json"

    def part_of(shard: str) -> Path:
        return out / "sft_dataset" / part_path("train", shard)

    def derive_batch(batch: list[str]) -> None:
        """What rule derive_batch_N runs."""
        tokens = [str(root / s / "neucodec_tokens.parquet") for s in batch]
        derive_job(
            shards=batch,
            tokens=tokens,
            local_tokens=tokens,
            metadata=[str(root / s / "metadata.parquet") for s in batch],
            reports=[str(report_of(s)) for s in batch],
            parts=[str(part_of(s)) for s in batch],
            part_keys=[("hf", "train")],
            columns=MAPPING,
            sft=sft,
        )

    derive_batch(shards)  # no exception: the job succeeds
    reports = {s: json.loads(report_of(s).read_text()) for s in shards}
    for shard, n in (("a/s0", 6), ("c", 8)):
        assert reports[shard]["record"] == WORKFLOW and "error" not in reports[shard]
        assert len(pd.read_parquet(part_of(shard))) == n
    bad = reports["bad/s1"]
    assert bad["record"] == FAILED and bad["shard"] == "bad/s1"
    assert re.match(rf"shard bad/s1: {reason}", bad["error"]), bad["error"]
    assert bad["encoded"] == 0 and bad["audio_seconds"] == 0 and bad["sft"]["rows_per_split"] == {"train": 0}
    assert bad["token_file"]["bytes"] == (root / "bad/s1/neucodec_tokens.parquet").stat().st_size
    assert len(pq.read_table(part_of("bad/s1"))) == 0  # every output exists: zero rows for the bad shard
    paths = [str(report_of(s)) for s in shards]
    with pytest.raises(FailedShardsError) as refused:
        refuse_failed(list(reports.values()), paths)
    message = str(refused.value)
    assert "nothing was written: 1 of 3 shards could not be derived" in message
    assert re.search(rf"^  bad/s1: {reason}", message, re.M), message
    assert f"  {report_of('bad/s1')}" in message and "a/s0" not in message

    def is_stale(shard: str) -> bool:
        files = [root / shard / "neucodec_tokens.parquet", root / shard / "metadata.parquet"]
        return stale([p.stat().st_mtime for p in [*files, report_of(shard), part_of(shard)]], 2)

    assert not any(is_stale(s) for s in shards)
    shutil.rmtree(root / "bad/s1")
    time.sleep(0.01)
    make_shard(root, "bad/s1", 7)  # fixed: newer than its report
    assert [s for s in shards if is_stale(s)] == ["bad/s1"]  # the plain rerun re-derives it alone
    derive_batch(["bad/s1"])
    fixed = json.loads(report_of("bad/s1").read_text())
    assert fixed["record"] == WORKFLOW and "error" not in fixed and len(pd.read_parquet(part_of("bad/s1"))) == 7
    refuse_failed([reports["a/s0"], fixed, reports["c"]], paths)  # summarize goes on
