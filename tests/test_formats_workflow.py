"""The trainers' formats built by the workflow (real Snakemake, real shards with token files already there, so nothing
is encoded): the Multilingual-TTS blocks open with the trainer's reader (mosaicml-streaming), the NeuTTS rows load
with `datasets`, every row is accounted for, and a new shard adds only its own parts."""

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_snakemake, simple_shard

from neucodec_workflow.demo.tokenizer import build_test_tokenizer
from neucodec_workflow.record.contract import SCHEMA

pytestmark = pytest.mark.workflow
TOKENS = "neucodec_tokens.parquet"

SENTENCES = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "She sells sea shells by the sea shore.",
        "Where are you going tonight?",
        "I bought 3 apples at the market.",  # NeuTTS drops it: a digit
        "Hello there, how are you",  # NeuTTS drops it: no final punctuation
        "The NASA team landed safely.",  # NeuTTS drops it: an acronym
        "x",  # both drop it: too short for Multilingual-TTS; NeuTTS: no final punctuation
        "It is a fine day for a walk.",
    ],
    "es": ["Buenos días, amigo.", "¿Dónde está la biblioteca?", "Me gusta mucho el café.", "Hasta mañana."],
}


def shard_with_tokens(corpus, name: str, language: str, seed: int) -> dict[str, np.ndarray]:
    """A real shard (FLAC in a tar, metadata) whose token file already exists (written by another tool, newer than
    its inputs): the workflow adopts it and derives the formats. Returns the tokens by segment id."""
    texts = SENTENCES[language]
    d = simple_shard(corpus, name, [0.05] * len(texts), seed=seed)
    meta = pd.read_parquet(d / "metadata.parquet")
    meta["text"] = texts
    meta["language"] = language
    meta["speaker"] = [f"spk{i % 2}" for i in range(len(texts))]
    meta["duration"] = [2.0 + i for i in range(len(texts))]
    meta.to_parquet(d / "metadata.parquet")
    rng = np.random.default_rng(seed)
    tokens = {
        sid: rng.integers(0, 65536, size=100 + 20 * i).astype(np.uint16) for i, sid in enumerate(meta["segment_id"])
    }
    table = pa.table(
        {
            "segment_id": list(tokens),
            "neucodec_tokens": [t.astype("<u2").tobytes() for t in tokens.values()],
            "token_count": pa.array([len(t) for t in tokens.values()], pa.int32()),
        },
        schema=SCHEMA.with_metadata(None),
    )
    pq.write_table(table, d / TOKENS)
    later = os.stat(d / "metadata.parquet").st_mtime + 5
    os.utime(d / TOKENS, (later, later))
    return tokens


def register_uint32():
    """What the Multilingual-TTS trainer does before opening its blocks: the custom `uint32` MDS encoding."""
    from streaming.base.format.mds.encodings import Encoding, _encodings

    class UInt32(Encoding):
        def encode(self, obj) -> bytes:
            return obj.tobytes()

        def decode(self, data: bytes):
            return np.frombuffer(data, np.uint32)

    _encodings["uint32"] = UInt32


def job_counts(text: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", text, re.M) if m[0] != "total"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    corpus = root / "corpus"
    tokens = {**shard_with_tokens(corpus, "en/s0", "en", 1), **shard_with_tokens(corpus, "es/s0", "es", 2)}
    tokenizer = build_test_tokenizer(root / "tokenizer")
    settings = root / "formats.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "sft": {
                    "formats": ["hf", "multilingual_tts", "neutts"],
                    "multilingual_tts": {"tokenizer": str(tokenizer), "block_tokens": 1024, "pairs_per_speaker": 4},
                }
            }
        )
    )
    config = {"corpus": str(corpus), "output": str(root / "out")}
    run = run_snakemake(root, config=config, configfiles=(settings,))
    return root, corpus, config, settings, tokens, run


def test_nothing_is_encoded_and_every_format_is_there(built):
    root, _, _, _, _, run = built
    counts = job_counts(run.stdout + run.stderr)
    assert "encode_shard" not in counts and counts["summarize"] == 1
    out = root / "out"
    for path in [
        "sft_dataset/README.md",
        "sft_dataset/index.json",
        "multilingual_tts/train/index.json",
        "multilingual_tts/README.md",
        "multilingual_tts/train/en/s0.mds",
        "multilingual_tts/train/es/s0.mds",
        "neutts/README.md",
        "neutts/data/train/en/s0.parquet",
        "neutts/data/train/es/s0.parquet",
    ]:
        assert (out / path).is_file(), path


def test_multilingual_tts_blocks_open_with_the_trainers_reader(built):
    from streaming import LocalDataset
    from transformers import AutoTokenizer

    root, _, _, _, tokens, _ = built
    register_uint32()
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    base = tok.convert_tokens_to_ids("<|s_0|>")
    speech_start, im_end = tok.convert_tokens_to_ids(["<|speech_start|>", "<|im_end|>"])
    ds = LocalDataset(local=str(root / "out/multilingual_tts/train"))
    stored = {t.tobytes(): sid for sid, t in tokens.items()}
    seen_tts, vc_rows = set(), 0
    for i in range(len(ds)):
        block = ds[i]
        ids, pos, mask = block["input_ids"], block["position_ids"], block["attention_mask"]
        assert int(mask.sum()) == len(ids) == len(pos) <= 1024
        start = 0
        for n in mask.tolist():
            row, rpos = ids[start : start + n], pos[start : start + n]
            assert rpos.tolist() == list(range(n))  # positions restart per row
            # every speech run (after <|speech_start|>, up to <|im_end|>) is one segment's stored tokens
            marks = np.flatnonzero(row == speech_start)
            runs = [row[m + 1 : m + 1 + np.flatnonzero(row[m + 1 :] == im_end)[0]] for m in marks]
            ids_of = [stored[(r - base).astype("<u2").tobytes()] for r in runs]
            if len(runs) == 1:
                seen_tts.add(ids_of[0])
            else:
                assert len(runs) == 2 and ids_of[0] != ids_of[1]
                vc_rows += 1
            start += n
    stats = json.loads((root / "out/stats.json").read_text())
    mtts = stats["sft_formats"]["multilingual_tts"]["train"]
    assert len(seen_tts) == mtts["rows"]["tts"] and vc_rows == mtts["rows"]["voice_cloning"] > 0
    # every segment is a TTS row or left out with its reason
    assert mtts["rows"]["tts"] + sum(mtts["dropped_by_reason"].values()) == len(tokens)
    assert "x" not in {t for s in SENTENCES.values() for t in s if t in seen_tts}
    card = (root / "out/multilingual_tts/README.md").read_text()
    assert f"| train | {mtts['rows']['tts']} | {vc_rows} |" in card and "Codec provenance" in card


def test_neutts_rows_load_with_datasets(built):
    from datasets import load_dataset

    root, _, _, _, tokens, _ = built
    ds = load_dataset(str(root / "out/neutts"), split="train")
    assert len(ds) > 0
    for row in ds:
        assert row["codes"] == tokens[row["segment_id"]].tolist()
        assert row["phones"] and row["text"][-1] in ".,?!"
    stats = json.loads((root / "out/stats.json").read_text())["sft_formats"]["neutts"]["train"]
    assert stats["rows"] == len(ds)
    assert stats["rows"] + sum(stats["dropped_by_reason"].values()) == len(tokens)
    assert set(ds["language"]) == {"en-us", "es"}  # the espeak-ng voice that made the phones


def test_a_new_shard_adds_only_its_own_parts(built):
    root, corpus, config, settings, tokens, _ = built
    out = root / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "/s0." in p.as_posix()}
    shard_with_tokens(corpus, "en/s1", "en", 3)
    run = run_snakemake(root, config=config, configfiles=(settings,))
    counts = job_counts(run.stdout + run.stderr)
    assert counts.get("derive_shard", 0) + sum(n for k, n in counts.items() if k.startswith("derive_batch")) == 1
    assert "encode_shard" not in counts
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the other shards' parts were not rewritten
    index = json.loads((out / "multilingual_tts/train/index.json").read_text())
    assert sorted(s["raw_data"]["basename"] for s in index["shards"]) == ["en/s0.mds", "en/s1.mds", "es/s0.mds"]
    assert (out / "neutts/data/train/en/s1.parquet").is_file()
    dry = run_snakemake(root, "-n", config=config, configfiles=(settings,))
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_a_deleted_format_folder_is_derived_again_without_encoding(built):
    import shutil

    root, _, config, settings, _, _ = built
    out = root / "out"
    index = (out / "multilingual_tts/train/index.json").read_text()
    shutil.rmtree(out / "multilingual_tts")
    run = run_snakemake(root, config=config, configfiles=(settings,))
    assert "encode_shard" not in job_counts(run.stdout + run.stderr)
    assert (out / "multilingual_tts/train/index.json").read_text() == index  # the same blocks, byte for byte
