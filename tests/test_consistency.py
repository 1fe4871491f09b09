"""What one dataset must never mix (dataset/consistency.py), through the jobs the rules run (``jobs.derive_job``,
``jobs.summarize_job``): parts made with other settings (a changed ``sft.*`` setting, another tokenizer under the same
name) are refused by summarize, naming the settings, the shards and the command that re-derives them, which works;
tokens of two codecs are refused, foreign files are counted as unknown; a stale local copy of a token file is never
read instead of the object in S3."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_derive import MAPPING, encode_report, write_foreign

from neucodec_workflow.commands import footers
from neucodec_workflow.commands import status as st
from neucodec_workflow.commands.verify import verify_shards
from neucodec_workflow.dataset import formats
from neucodec_workflow.dataset.codecs import codec_identity
from neucodec_workflow.dataset.consistency import MixedDatasetError
from neucodec_workflow.record.contract import write_tokens
from neucodec_workflow.workflow.dataset_jobs import derive_job, same_object, summarize_job

REPO = Path(__file__).resolve().parents[1]
SFT: dict[str, Any] = {
    "formats": ["hf"],
    "validation_fraction": 0.3,
    "rows_per_row_group": 100,
    "push_to_hub": "",
    "multilingual_tts": {
        "tokenizer": "",
        "block_tokens": 1024,
        "speaker_format": "{dataset}_{speaker}",
        "pairs_per_speaker": 4,
        "max_seconds": 20.0,
        "seed": 0,
    },
    "neutts": {"default_language": "en", "language_voices": {}, "max_seconds": None},
}
REAL = {"codec_id": "neuphonic/neucodec", "revision": "abc", "weights_sha256": "1" * 64, "random_weights": False}
OTHER = {"codec_id": "neuphonic/distill-neucodec", "revision": "def", "weights_sha256": "2" * 64}


def sft_with(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SFT)
    for key, value in changes.items():
        if "__" in key:
            section, name = key.split("__")
            out[section][name] = value
        else:
            out[key] = value
    return out


def splits_of(sft: dict[str, Any]) -> list[str]:
    return ["train", "validation"] if sft["validation_fraction"] > 0 else ["train"]


def make_shard(corpus: Path, shard: str, n: int = 40, provenance: dict[str, Any] | None = None) -> None:
    """A shard directory: metadata (10 speakers, English sentences) and a token file written by the workflow."""
    d = corpus / shard
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(shard) + n)
    ids = [f"{shard.replace('/', '_')}_{i}" for i in range(n)]
    pd.DataFrame(
        {
            "segment_id": ids,
            "text": [f"Sentence number {'one two three four'.split()[i % 4]} of the shard." for i in range(n)],
            "language": "en",
            "speaker": [f"s{i % 10}" for i in range(n)],
            "duration": None,
            "dataset": "ds",
        }
    ).to_parquet(d / "metadata.parquet")
    rows = [(i, rng.integers(0, 65536, size=80).astype(np.uint16)) for i in ids]
    write_tokens(
        d / "neucodec_tokens.parquet", rows, provenance or REAL, report=lambda: encode_report(shard, ids, rows, 1)
    )


def derive(corpus: Path, out: Path, shards: list[str], sft: dict[str, Any], columns: dict[str, Any] = MAPPING) -> None:
    """What rule derive_batch_N runs for ``shards``."""
    part_keys = [(fmt, split) for fmt in sft["formats"] for split in splits_of(sft)]
    tokens = [str(corpus / s / "neucodec_tokens.parquet") for s in shards]
    derive_job(
        shards=shards,
        tokens=tokens,
        local_tokens=tokens,
        metadata=[str(corpus / s / "metadata.parquet") for s in shards],
        reports=[str(out / "shards" / f"{s}.json") for s in shards],
        parts=[str(out / formats.ROOTS[f] / formats.part_path(f, x, s)) for s in shards for f, x in part_keys],
        part_keys=part_keys,
        columns=columns,
        sft=sft,
    )


def summarize(out: Path, shards: list[str], sft: dict[str, Any], columns: dict[str, Any] = MAPPING) -> None:
    """What rule summarize runs over ``shards``."""
    outputs = {"stats": str(out / "stats.json"), "shards": str(out / "shards.parquet")}
    for fmt in sft["formats"]:
        for name, path in formats.summary_files(fmt, splits_of(sft)).items():
            outputs[f"{fmt}_{name}"] = str(out / formats.ROOTS[fmt] / path)
    summarize_job(
        reports=[str(out / "shards" / f"{s}.json") for s in shards],
        outputs=outputs,
        sft=sft,
        columns=columns,
        stale_list=str(out / "logs" / "summarize_stale_reports.txt"),
    )


def rederive_from(message: str, out: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the command the message gives (``neucodec-workflow rederive ...``); the shards whose reports it removed."""
    command = re.search(r"neucodec-workflow (rederive .+)", message)
    assert command, message
    before = {p for p in (out / "shards").rglob("*.json")}
    assert st.main(command[1].split()) == 0
    assert "run snakemake again" in capsys.readouterr().out
    gone = before - {p for p in (out / "shards").rglob("*.json")}
    return sorted(p.relative_to(out / "shards").as_posix().removesuffix(".json") for p in gone)


# ------------------------------------------------------------------------------------------------ 1. settings
def test_a_changed_validation_fraction_is_refused_naming_it_and_the_shards_then_rederived(tmp_path, capsys):
    """Parts derived with validation_fraction 0.3, new shards with 0.45: a speaker of the old parts would be in train
    there and in validation in a part made now. summarize refuses (writing nothing), names the setting, its values,
    the stale shards and the command; the command removes their reports; derived again, the dataset is whole."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    shards = ["a/s0", "a/s1", "b/s0", "b/s1", "c/s0"]
    for s in shards:
        make_shard(corpus, s)
    derive(corpus, out, shards[:4], SFT)
    summarize(out, shards[:4], SFT)  # one setting everywhere: fine
    raised = sft_with(validation_fraction=0.45)
    derive(corpus, out, shards[4:], raised)
    (out / "stats.json").unlink()
    with pytest.raises(MixedDatasetError) as failed:
        summarize(out, shards, raised)
    message = str(failed.value)
    assert "sft.validation_fraction: 0.3 -> 0.45 (parts -> this run): 4 shard(s): a/s0, a/s1, b/s0, b/s1" in message
    assert "c/s0" not in message.split("neucodec-workflow")[0]  # derived with this run's settings
    assert "neucodec-workflow rederive --from" in message and not (out / "stats.json").exists()
    listed = (out / "logs" / "summarize_stale_reports.txt").read_text().split()
    assert listed == [str(out / "shards" / f"{s}.json") for s in shards[:4]]

    assert rederive_from(message, out, capsys) == shards[:4]
    derive(corpus, out, shards[:4], raised)  # what the next `snakemake` runs (their reports are missing)
    summarize(out, shards, raised)
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["sft_rows_per_split"].values()) == 5 * 40
    splits: dict[str, set[str]] = {}
    for s in shards:
        for split in ("train", "validation"):
            for speaker in pq.read_table(out / "sft_dataset" / "data" / split / f"{s}.parquet")["speaker"].to_pylist():
                splits.setdefault(speaker, set()).add(split)
    assert all(len(v) == 1 for v in splits.values())  # no speaker in both splits
    card = (out / "sft_dataset" / "README.md").read_text()
    assert '"sft.validation_fraction": 0.45' in card


def test_every_part_records_what_shaped_it(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_shard(corpus, "a/s0")
    derive(corpus, out, ["a/s0"], SFT)
    summarize(out, ["a/s0"], SFT)
    report = json.loads((out / "shards" / "a/s0.json").read_text())
    shaped = report["sft"]["fingerprint"]["hf"]
    assert shaped["settings"]["sft.validation_fraction"] == 0.3
    assert shaped["settings"]["columns.text"] == ["text", "transcript"]
    assert shaped == formats.fingerprint(formats.current_settings("hf", SFT, MAPPING), {})
    for split in ("train", "validation"):
        part = out / "sft_dataset" / "data" / split / "a/s0.parquet"
        stored = json.loads(pq.read_schema(part).metadata[formats.SETTINGS_KEY.encode()])
        assert stored == shaped
    index = json.loads((out / "sft_dataset" / "index.json").read_text())
    assert {p["fingerprint"] for p in index["parts"]} == {shaped["sha256"]}


def test_a_changed_column_mapping_is_refused(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for s in ("a/s0", "a/s1"):
        make_shard(corpus, s)
    derive(corpus, out, ["a/s0"], SFT)
    other = {**MAPPING, "speaker": "dataset"}
    derive(corpus, out, ["a/s1"], SFT, other)
    with pytest.raises(MixedDatasetError, match=r'columns.speaker: "speaker" -> "dataset" .*: 1 shard\(s\): a/s0'):
        summarize(out, ["a/s0", "a/s1"], SFT, other)


def test_reports_without_a_fingerprint_are_stale(tmp_path):
    """Parts derived before parts recorded their settings cannot be proven to match: re-derived once."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_shard(corpus, "a/s0")
    derive(corpus, out, ["a/s0"], SFT)
    path = out / "shards" / "a/s0.json"
    report = json.loads(path.read_text())
    del report["sft"]["fingerprint"]
    path.write_text(json.dumps(report))
    with pytest.raises(MixedDatasetError, match="record no settings") as failed:
        summarize(out, ["a/s0"], SFT)
    assert f"neucodec-workflow rederive {path}" in str(failed.value)  # few: named on the command line


@pytest.mark.slow
def test_multilingual_tts_tokenizer_and_block_size_changes_are_refused(tmp_path, monkeypatch):
    """The tokenizer is recorded by what it is (a hash of its vocabulary, merges and added tokens), not by its name:
    another tokenizer in the same directory makes the old parts stale; so does another block size."""
    from neucodec_workflow.dataset.mtts import load_tokenizer
    from neucodec_workflow.demo.tokenizer import build_test_tokenizer

    monkeypatch.setenv("RAYON_NUM_THREADS", "1")
    corpus, out, directory = tmp_path / "corpus", tmp_path / "out", tmp_path / "tokenizer"
    for s in ("a/s0", "a/s1", "a/s2"):
        make_shard(corpus, s, n=12)
    build_test_tokenizer(directory, vocab_size=2000)
    sft = sft_with(
        formats=["hf", "multilingual_tts"], validation_fraction=0.0, multilingual_tts__tokenizer=str(directory)
    )
    load_tokenizer.cache_clear()
    derive(corpus, out, ["a/s0"], sft)
    first = load_tokenizer(str(directory)).identity
    summarize(out, ["a/s0"], sft)
    card = (out / "multilingual_tts" / "README.md").read_text()
    assert first in card and '"sft.multilingual_tts.block_tokens": 1024' in card

    shutil.rmtree(directory)
    build_test_tokenizer(directory, vocab_size=2500)  # another vocabulary under the same name
    load_tokenizer.cache_clear()  # a new job process
    derive(corpus, out, ["a/s1"], sft)
    second = load_tokenizer(str(directory)).identity
    assert second != first
    with pytest.raises(MixedDatasetError) as failed:
        summarize(out, ["a/s0", "a/s1"], sft)
    assert f'multilingual_tts tokenizer_sha256: "{first}" -> "{second}" (parts -> this run): 1 shard(s): a/s0' in str(
        failed.value
    )

    bigger = sft_with(**{**sft, "multilingual_tts": {**sft["multilingual_tts"], "block_tokens": 2048}})
    derive(corpus, out, ["a/s2"], bigger)
    with pytest.raises(MixedDatasetError) as failed:
        summarize(out, ["a/s0", "a/s1", "a/s2"], bigger)
    assert "sft.multilingual_tts.block_tokens: 1024 -> 2048 (parts -> this run): 2 shard(s): a/s0, a/s1" in str(
        failed.value
    )


# -------------------------------------------------------------------------------------------------- 2. codecs
def test_two_codecs_are_refused_naming_the_shards(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_shard(corpus, "a/s0", provenance=REAL)
    make_shard(corpus, "a/s1", provenance=REAL)
    make_shard(corpus, "b/s0", provenance=OTHER)
    derive(corpus, out, ["a/s0", "a/s1", "b/s0"], SFT)
    with pytest.raises(MixedDatasetError) as failed:
        summarize(out, ["a/s0", "a/s1", "b/s0"], SFT)
    message = str(failed.value)
    assert "made by 2 different codecs" in message
    assert f"neuphonic/neucodec (weights sha256 {'1' * 12}): 2 shard(s): a/s0, a/s1" in message
    assert f"neuphonic/distill-neucodec (weights sha256 {'2' * 12}): 1 shard(s): b/s0" in message
    assert not (out / "stats.json").exists()


def test_random_weights_of_two_seeds_are_two_codecs_and_one_sha256_under_two_names_is_one():
    random = {"codec_id": "random", "random_weights": True}
    assert codec_identity({**random, "seed": 0}) != codec_identity({**random, "seed": 1})
    assert codec_identity(REAL) == codec_identity({**REAL, "codec_id": "checkpoint:pytorch_model.bin"})
    assert codec_identity({}) is None  # foreign: unknown


def test_foreign_files_beside_one_codec_are_included_and_counted_as_unknown(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_shard(corpus, "a/s0", provenance=REAL)
    make_shard(corpus, "f/s0")
    ids = pd.read_parquet(corpus / "f/s0" / "metadata.parquet")["segment_id"].tolist()
    write_foreign(corpus / "f/s0" / "neucodec_tokens.parquet", [(i, b"\x01\x00" * 50, 50) for i in ids])
    derive(corpus, out, ["a/s0", "f/s0"], SFT)
    summarize(out, ["a/s0", "f/s0"], SFT)
    card = (out / "sft_dataset" / "README.md").read_text()
    assert f"| `neuphonic/neucodec` (revision abc) | sha256 `{'1' * 64}` | 1 |" in card
    assert "| unknown: foreign token files, no provenance (included as they are) | ? | 1 |" in card
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["sft_rows_per_split"].values()) == 80  # the foreign shard's rows are in the dataset


def test_status_and_verify_show_the_codecs_with_their_shard_counts(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shards = ["a/s0", "a/s1", "b/s0", "f/s0"]
    for s, p in zip(shards, (REAL, REAL, OTHER, None), strict=True):
        make_shard(corpus, s, n=4, provenance=p)
        (corpus / s / "audio.tar").write_bytes(b"")  # a shard is a directory with an audio.tar
        later = time.time() + 5
        os.utime(corpus / s / "neucodec_tokens.parquet", (later, later))
    ids = pd.read_parquet(corpus / "f/s0" / "metadata.parquet")["segment_id"].tolist()
    write_foreign(corpus / "f/s0" / "neucodec_tokens.parquet", [(i, b"\x01\x00" * 50, 50) for i in ids])
    os.utime(corpus / "f/s0" / "neucodec_tokens.parquet", (later, later))

    config = st.load_config(
        REPO, overrides=[f"corpus={corpus}", f"output={tmp_path / 'out'}"], snakefile=REPO / "Snakefile"
    )
    s = st.status(config, tmp_path, cache=footers.FooterCache(None))
    assert [(c["label"], c["shards"]) for c in s["codecs"]] == [
        (f"neuphonic/neucodec (weights sha256 {'1' * 12})", 2),
        (f"neuphonic/distill-neucodec (weights sha256 {'2' * 12})", 1),
    ]
    assert s["codec_unknown"] == 1
    text = st.render(s)
    assert "unknown (foreign, no provenance) 1 shards" in text and "MIXED" in text

    summary = verify_shards(shards, [str(corpus / x / "neucodec_tokens.parquet") for x in shards])
    assert [(c["label"], c["shards"], c["shard_names"]) for c in summary["codecs"]["codecs"]] == [
        (f"neuphonic/neucodec (weights sha256 {'1' * 12})", 2, ["a/s0", "a/s1"]),
        (f"neuphonic/distill-neucodec (weights sha256 {'2' * 12})", 1, ["b/s0"]),
    ]
    assert summary["codecs"]["unknown"] == 1 and summary["codecs"]["mixed"] is True


# ------------------------------------------------------------------------------------------- 3. local copies
def test_same_object_needs_equal_bytes_by_size_and_etag(monkeypatch):
    import hashlib
    from datetime import UTC, datetime

    data = b"x" * 1000
    now = datetime.now(UTC)
    md5 = hashlib.md5(data).hexdigest()
    assert same_object(data, 0.0, {"ContentLength": 1000, "ETag": f'"{md5}"', "LastModified": now}) is None
    assert "bytes" in (same_object(data, 0.0, {"ContentLength": 999, "ETag": f'"{md5}"', "LastModified": now}) or "")
    other = hashlib.md5(b"y" * 1000).hexdigest()
    assert same_object(data, 0.0, {"ContentLength": 1000, "ETag": f'"{other}"', "LastModified": now})
    # an ETag that is no MD5 of the content (SSE-KMS): only a copy not older than the object
    assert same_object(data, now.timestamp() + 1, {"ContentLength": 1000, "ETag": '"kms"', "LastModified": now}) is None
    big = bytes(range(256)) * (40 << 12)  # 40 MiB: five parts of 8 MiB
    parts = b"".join(hashlib.md5(big[o : o + (8 << 20)]).digest() for o in range(0, len(big), 8 << 20))
    etag = f'"{hashlib.md5(parts).hexdigest()}-5"'
    assert same_object(big, 0.0, {"ContentLength": len(big), "ETag": etag, "LastModified": now}) is None
    # the encode job's own part size (NEUCODEC_S3_MULTIPART_BYTES): 12 MiB parts
    parts = b"".join(hashlib.md5(big[o : o + (12 << 20)]).digest() for o in range(0, len(big), 12 << 20))
    etag = f'"{hashlib.md5(parts).hexdigest()}-4"'
    assert same_object(big, 0.0, {"ContentLength": len(big), "ETag": etag, "LastModified": now})  # not a candidate
    monkeypatch.setenv("NEUCODEC_S3_MULTIPART_BYTES", str(12 << 20))
    assert same_object(big, 0.0, {"ContentLength": len(big), "ETag": etag, "LastModified": now}) is None


@pytest.mark.s3
def test_a_stale_local_copy_of_a_token_file_is_not_read(tmp_path, monkeypatch):
    """A killed run left a local copy of a shard's token file; the shard was encoded again elsewhere and its object
    replaced. The derive job reads the object (the copy is not what S3 holds), and still uses a copy that is."""
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3
    from test_s3 import ACCESS_KEY, SECRET

    from neucodec_workflow.storage.s3 import S3Settings

    corpus = tmp_path / "corpus"
    make_shard(corpus, "a/s0", n=10)
    make_shard(corpus, "a/s1", n=10)
    with LoopbackS3() as server:
        for key, value in {
            "ENDPOINT_URL": server.endpoint,
            "REGION": "us-east-1",
            "ACCESS_KEY": ACCESS_KEY,
            "SECRET_KEY": SECRET,
        }.items():
            monkeypatch.setenv(f"SNAKEMAKE_STORAGE_S3_{key}", value)
        client = S3Settings.from_env().client()
        client.create_bucket(Bucket="seams")
        url = {s: f"s3://seams/c/{s}/neucodec_tokens.parquet" for s in ("a/s0", "a/s1")}
        stale = tmp_path / "local" / "a_s0.parquet"
        stale.parent.mkdir()
        shutil.copy(corpus / "a/s0" / "neucodec_tokens.parquet", stale)  # what the killed run left
        # encoded again elsewhere: other tokens, the same ids
        rng = np.random.default_rng(7)
        ids = pd.read_parquet(corpus / "a/s0" / "metadata.parquet")["segment_id"].tolist()
        rows = [(i, rng.integers(0, 65536, size=120).astype(np.uint16)) for i in ids]
        again = tmp_path / "again.parquet"
        write_tokens(again, rows, REAL, report=lambda: encode_report("a/s0", ids, rows, 1))
        for s, body in (
            ("a/s0", again.read_bytes()),
            ("a/s1", (corpus / "a/s1" / "neucodec_tokens.parquet").read_bytes()),
        ):
            client.put_object(Bucket="seams", Key=f"c/{s}/neucodec_tokens.parquet", Body=body)
        fresh = corpus / "a/s1" / "neucodec_tokens.parquet"  # the copy an upload was made from: the object
        server.reset()
        out = tmp_path / "out"
        derive_job(
            shards=["a/s0", "a/s1"],
            tokens=[url["a/s0"], url["a/s1"]],
            local_tokens=[str(stale), str(fresh)],
            metadata=[str(corpus / s / "metadata.parquet") for s in ("a/s0", "a/s1")],
            reports=[str(out / "shards" / f"{s}.json") for s in ("a/s0", "a/s1")],
            parts=[str(out / "sft_dataset" / "data" / "train" / f"{s}.parquet") for s in ("a/s0", "a/s1")],
            part_keys=[("hf", "train")],
            columns=MAPPING,
            sft=sft_with(validation_fraction=0.0),
        )
        assert server.counts()["by_method"] == {"HEAD": 2, "GET": 1}  # a/s0's object; a/s1 from its copy
    report = json.loads((out / "shards" / "a/s0.json").read_text())
    assert report["token_file"]["tokens"] == 120 * 10 and report["token_file"]["bytes"] == again.stat().st_size
    part = pq.read_table(out / "sft_dataset" / "data" / "train" / "a/s0.parquet")
    assert part["token_count"].to_pylist() == [120] * 10
    assert json.loads((out / "shards" / "a/s1.json").read_text())["token_file"]["tokens"] == 80 * 10


# ------------------------------------------------------------------------------------------- the workflow itself
@pytest.mark.workflow
def test_snakemake_refuses_a_mixed_dataset_and_the_printed_command_fixes_it(tmp_path):
    """Real Snakemake runs: a dataset derived with validation_fraction 0.3; then 0.4 and a new shard: the new shard is
    derived, summarize fails naming the setting and the old shards; the command it prints, then the same snakemake
    command, re-derive the old shards (no encoding) and summarize; nothing is left to do."""
    import subprocess
    import sys

    import yaml
    from conftest import run_snakemake
    from test_formats_workflow import job_counts, shard_with_tokens

    def adopted(shard: str, language: str, seed: int) -> None:
        """A shard whose token file is newer than its inputs, all in the past (the outputs made now are newer)."""
        shard_with_tokens(corpus, shard, language, seed)
        now = time.time()
        for name, age in (("audio.tar", 20), ("metadata.parquet", 20), ("neucodec_tokens.parquet", 10)):
            os.utime(corpus / shard / name, (now - age, now - age))

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    adopted("en/s0", "en", 1)
    adopted("es/s0", "es", 2)
    config = {"corpus": str(corpus), "output": str(out)}
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"sft": {"validation_fraction": 0.3}}))
    run_snakemake(tmp_path, config=config, configfiles=(settings,))

    adopted("en/s1", "en", 3)
    settings.write_text(yaml.safe_dump({"sft": {"validation_fraction": 0.4}}))
    failed = run_snakemake(tmp_path, config=config, configfiles=(settings,), check=False)
    assert failed.returncode != 0
    counts = job_counts(failed.stdout + failed.stderr)
    assert "encode_shard" not in counts and counts.get("summarize") == 1
    log = (out / "logs" / "summarize.log").read_text()
    assert "sft.validation_fraction: 0.3 -> 0.4 (parts -> this run): 2 shard(s): en/s0, es/s0" in log, log
    command = re.search(r"neucodec-workflow rederive (\S.*)", log)
    assert command, log
    cli = Path(sys.executable).parent / "neucodec-workflow"
    subprocess.run([str(cli), "rederive", *command[1].split()], cwd=tmp_path, check=True, capture_output=True)

    fixed = run_snakemake(tmp_path, config=config, configfiles=(settings,))
    counts = job_counts(fixed.stdout + fixed.stderr)
    assert "encode_shard" not in counts and counts["summarize"] == 1
    for s in ("en/s0", "es/s0", "en/s1"):
        report = json.loads((out / "shards" / f"{s}.json").read_text())
        assert report["sft"]["fingerprint"]["hf"]["settings"]["sft.validation_fraction"] == 0.4
    dry = run_snakemake(tmp_path, "-n", config=config, configfiles=(settings,))
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.s3
def test_rederive_removes_reports_in_s3(tmp_path, monkeypatch, capsys):
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3
    from test_s3 import ACCESS_KEY, SECRET

    from neucodec_workflow.storage.s3 import S3Settings

    with LoopbackS3() as server:
        for key, value in {"ENDPOINT_URL": server.endpoint, "ACCESS_KEY": ACCESS_KEY, "SECRET_KEY": SECRET}.items():
            monkeypatch.setenv(f"SNAKEMAKE_STORAGE_S3_{key}", value)
        client = S3Settings.from_env().client()
        client.create_bucket(Bucket="out")
        for s in ("a/s0", "a/s1", "b/s0"):
            client.put_object(Bucket="out", Key=f"o/shards/{s}.json", Body=b"{}")
        listed = tmp_path / "stale.txt"
        listed.write_text("s3://out/o/shards/a/s0.json\ns3://out/o/shards/b/s0.json\n")
        assert st.main(["rederive", "--from", str(listed)]) == 0
        assert "removed 2 of 2 shard reports" in capsys.readouterr().out
        left = [o["Key"] for o in client.list_objects_v2(Bucket="out")["Contents"]]
    assert left == ["o/shards/a/s1.json"]
