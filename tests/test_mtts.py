"""The multilingual_tts format (dataset/mtts*.py) against real components: a real byte-level BPE tokenizer of the
model's class with the model's special and speech tokens (demo/tokenizer.py, the demo's), and mosaicml-streaming's
own ``MDSWriter`` and ``LocalDataset`` with the trainer's uint32 encoding."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from neucodec_workflow.dataset import mtts_mds
from neucodec_workflow.dataset.formats import MULTILINGUAL_TTS, NEUTTS, schema_defaults
from neucodec_workflow.dataset.mtts import load_tokenizer, mtts_part
from neucodec_workflow.dataset.mtts_mds import (
    MDS_COLUMNS,
    MDS_HASHES,
    MDS_SIZE_LIMIT,
    Packed,
    mds_config,
    merge_index,
    pack,
    write_mds,
)
from neucodec_workflow.dataset.mtts_pairs import speaker_pairs
from neucodec_workflow.dataset.mtts_rows import MttsSettings, build_rows, render_tts, render_vc, speaker_names
from neucodec_workflow.dataset.mtts_tokenizer import IM_START, SPEECH_START, MttsError, SpeechTokenizer
from neucodec_workflow.dataset.neutts import NeuttsSettings
from neucodec_workflow.dataset.sft import shard_rows
from neucodec_workflow.demo.tokenizer import build_test_tokenizer, sample_text
from neucodec_workflow.record.records import Reason

EDGE_TEXTS = [
    "  Hello   world, twice  ",
    "line one\nline two",
    "tab\tseparated words",
    "e\u0301cole in NFD, and ca\u0300 va",
    "«Bonjour» dit-il",
    "123 numbers first",
    ", starts with a comma",
    "emoji 😀 in the middle",
    "almost a token: <|s_5 and im_end|> and <speech_start> here",  # no token: kept
    "中文没有空格的句子。",
    "ends with a space before a colon :",
    "'s apostrophe first",
    "\u00a0non-breaking\u00a0space\u00a0",
    "Ünïcödé ÀÉÎÕÜ ß ø å",
]
SPEAKERS = ["alice", "bob", "spk:1", "名字", None, ""]
DEFAULTS = MttsSettings.from_config(schema_defaults(MULTILINGUAL_TTS))  # what the workflow runs with by default


def settings_with(**changes: Any) -> MttsSettings:
    """The default settings (the config schema's), with ``changes``."""
    return replace(DEFAULTS, **changes)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SpeechTokenizer:
    directory = build_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return load_tokenizer(str(directory))


@pytest.fixture(scope="module")
def uint32_encoding():
    """Register the trainer's uint32 array encoding (over streaming's scalar one), as the trainer does."""
    from streaming.base.format.mds.encodings import Encoding, _encodings

    class UInt32(Encoding):
        def encode(self, obj) -> bytes:
            return obj.tobytes()

        def decode(self, data: bytes) -> np.ndarray:
            return np.frombuffer(data, np.uint32)

    saved = _encodings["uint32"]
    _encodings["uint32"] = UInt32
    yield
    _encodings["uint32"] = saved


def corpus(
    rng: np.random.Generator,
    n: int,
    *,
    shard: str = "s1",
    texts: list[str] | None = None,
    speakers: list[str | None] | None = None,
    tokens: tuple[int, int] = (20, 200),
    durations: np.ndarray | None = None,
) -> pd.DataFrame:
    """A shard's rows as ``sft.shard_rows`` makes them (codes include 0 and 65535)."""
    counts = rng.integers(tokens[0], tokens[1], n)
    codes = [rng.integers(0, 65536, c, dtype=np.uint16) for c in counts]
    codes[0][:2] = (0, 65535)
    ids = [f"{shard}-{i:04d}" for i in range(n)]
    if texts is None:
        texts = [sample_text(rng, int(rng.integers(1, 15))) for _ in range(n)]
    if speakers is None:
        speakers = [SPEAKERS[int(rng.integers(0, len(SPEAKERS)))] for _ in range(n)]
    token_rows = pd.DataFrame(
        {"segment_id": ids, "neucodec_tokens": [c.tobytes() for c in codes], "token_count": counts.astype(np.int32)}
    )
    fields = pd.DataFrame(
        {
            "segment_id": ids,
            "text": texts,
            "language": ["xx"] * n,
            "speaker": speakers,
            "dataset": [None if i % 7 == 3 else "ds" for i in range(n)],
            "duration": counts * 0.02 if durations is None else durations,
        }
    )
    rows, excluded = shard_rows(shard, token_rows, fields)
    assert not excluded
    return rows


def rendered(rows: pd.DataFrame, settings: MttsSettings, ref: int, target: int) -> str:
    """A row as the upstream code renders it."""
    text = rows["text"].iloc[target].strip()
    codes = rows["neucodec_tokens"].iloc[target]
    if ref < 0:
        name = speaker_names(rows, settings.speaker_format)[0][target]
        return render_tts(name, text, codes)
    return render_vc(rows["text"].iloc[ref].strip(), rows["neucodec_tokens"].iloc[ref], text, codes)


def packed_of(shard: str, rows: pd.DataFrame, tokenizer: SpeechTokenizer, settings: MttsSettings) -> Packed:
    built = build_rows(shard, rows, tokenizer, settings)
    return Packed(built.rows, pack(built.rows.lengths, settings.block_tokens), settings.block_tokens)


def test_ids_equal_the_tokenized_rendered_rows(tokenizer: SpeechTokenizer) -> None:
    rng = np.random.default_rng(1)
    n = 200
    texts = [EDGE_TEXTS[i] if i < len(EDGE_TEXTS) else sample_text(rng, int(rng.integers(1, 15))) for i in range(n)]
    rows = corpus(rng, n, texts=texts)
    settings = settings_with(pairs_per_speaker=40)
    built = build_rows("s1", rows, tokenizer, settings)
    assert built.tts == n and built.voice_cloning > 100 and not built.rejects
    hf = tokenizer.tokenizer
    vc = np.flatnonzero(built.rows.ref >= 0)
    check = np.concatenate([np.arange(built.tts), rng.choice(vc, 200, replace=False)])
    for r in check.tolist():
        ref, target = int(built.rows.ref[r]), int(built.rows.target[r])
        expected = hf(rendered(rows, settings, ref, target), add_special_tokens=False).input_ids
        assert built.rows.ids(r, r + 1).tolist() == expected, (ref, target)
    assert built.rows.lengths.sum() == len(built.rows.ids(0, len(built.rows)))


def test_texts_holding_the_tokenizers_own_tokens_are_left_out(tokenizer: SpeechTokenizer, tmp_path: Path) -> None:
    """A transcript (or speaker name) holding <|im_end|>, <|speech_start|> or <|s_12|> is tokenized as those tokens:
    the row would be corrupt. Such rows are left out under their own reason, counted, and make no pairs."""
    rng = np.random.default_rng(11)
    n = 12
    texts = [sample_text(rng, 4, "en") for _ in range(n)]
    texts[1] = "She said <|im_end|> and left."
    texts[2] = "<|speech_start|> at the start"
    texts[3] = "a speech token <|s_12|> inside"
    texts[4] = "the end of text <|endoftext|>"  # an added token of the base model
    texts[5] = "almost <|s_12 but not a token|>"  # kept: not a token
    speakers = ["alice"] * n
    speakers[6] = "bob<|im_start|>"  # the speaker name goes into the TTS row too
    rows = corpus(rng, n, texts=texts, speakers=speakers, tokens=(60, 61))
    summary = mtts_part("s1", rows, tokenizer, settings_with(pairs_per_speaker=100), tmp_path / "s1.mds", "s1.mds")
    ids = rows["segment_id"].tolist()
    dropped = {d["segment_id"]: d for d in summary["dropped"]}
    assert sorted(dropped) == sorted(ids[i] for i in (1, 2, 3, 4, 6))
    assert {d["reason"] for d in dropped.values()} == {Reason.TEXT_HAS_SPECIAL_TOKENS.value}
    assert "the text holds the token <|im_end|>" in dropped[ids[1]]["detail"]
    assert "<|s_12|>" in dropped[ids[3]]["detail"] and "<|endoftext|>" in dropped[ids[4]]["detail"]
    assert "speaker name" in dropped[ids[6]]["detail"] and "<|im_start|>" in dropped[ids[6]]["detail"]
    assert summary["dropped_by_reason"] == {"text_has_special_tokens": 5}
    assert summary["rows"]["tts"] == n - 5
    built = build_rows("s1", rows, tokenizer, settings_with(pairs_per_speaker=100))
    left_out = {1, 2, 3, 4, 6}
    assert not left_out & {int(t) for t in built.rows.target} and not left_out & {int(r) for r in built.rows.ref}
    special = {tokenizer.im_start, tokenizer.im_end, tokenizer.speech_start}
    for r in range(len(built.rows)):  # every row: one template token of each kind per utterance, nothing else added
        row = built.rows.ids(r, r + 1)
        utterances = 1 if built.rows.ref[r] < 0 else 2
        assert [int((row == t).sum()) for t in sorted(special)] == [utterances] * 3


def test_speaker_names_render_null_as_unknown(tokenizer: SpeechTokenizer) -> None:
    rows = corpus(np.random.default_rng(2), 8, speakers=["a", None, "", "a", "b", "a", "b", None])
    names, has_speaker = speaker_names(rows, "{dataset}_{speaker}")
    assert names.tolist() == ["ds_a", "ds_unknown", "ds_unknown", "unknown_a", "ds_b", "ds_a", "ds_b", "ds_unknown"]
    assert has_speaker.tolist() == [True, False, False, True, True, True, True, False]
    with pytest.raises(ValueError, match="speaker_format"):
        settings_with(speaker_format="{dataset}_{gender}")


def test_tokenizer_checks_name_the_tokenizer(tokenizer: SpeechTokenizer) -> None:
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend.to_str())

    def broken(edit) -> SpeechTokenizer:
        s = json.loads(json.dumps(spec))
        edit(s["added_tokens"])
        return SpeechTokenizer(SimpleNamespace(backend_tokenizer=Tokenizer.from_str(json.dumps(s))), "broken-tok")

    def drop(token: str):
        return lambda added: added.remove(next(a for a in added if a["content"] == token))

    def swap(added) -> None:  # tokenizers numbers added tokens in list order
        i, j = (next(k for k, t in enumerate(added) if t["content"] == c) for c in ("<|s_7|>", "<|s_8|>"))
        added[i], added[j] = {**added[j], "id": added[i]["id"]}, {**added[i], "id": added[j]["id"]}

    with pytest.raises(MttsError, match=r"broken-tok: 1 of the 65536 speech tokens are missing, e.g. <\|s_100\|>"):
        broken(drop("<|s_100|>"))
    with pytest.raises(MttsError, match=r"broken-tok: has no token <\|speech_start\|>"):
        broken(drop("<|speech_start|>"))
    with pytest.raises(MttsError, match=r"broken-tok: the speech token ids are not contiguous: <\|s_7\|>"):
        broken(swap)
    assert load_tokenizer(tokenizer.name) is tokenizer  # once per process
    assert tokenizer.speech_base == tokenizer.speech_start + 1 == tokenizer.im_end + 2
    assert tokenizer.speech_ids(np.array([0, 65535], np.uint16)).tolist() == [
        tokenizer.speech_base,
        tokenizer.speech_base + 65535,
    ]


@pytest.mark.parametrize("chunk", [mtts_mds.CHUNK_TOKENS, 5000])
def test_mds_file_and_entry_identical_to_mdswriter(
    tokenizer: SpeechTokenizer, uint32_encoding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    from streaming import MDSWriter

    monkeypatch.setattr(mtts_mds, "CHUNK_TOKENS", chunk)  # 5000: the file is encoded in many pieces
    rows = corpus(np.random.default_rng(3), 60, tokens=(100, 600))
    packed = packed_of("s1", rows, tokenizer, settings_with(pairs_per_speaker=10, block_tokens=4096))
    assert len(packed) > 5 and packed.tokens > 10 * chunk or chunk == mtts_mds.CHUNK_TOKENS
    entry = write_mds(tmp_path / "mine" / "s1.mds", packed, "s1.mds")
    with MDSWriter(
        out=str(tmp_path / "lib"), columns=MDS_COLUMNS, compression=None, hashes=MDS_HASHES, size_limit=MDS_SIZE_LIMIT
    ) as writer:
        for block in packed:
            writer.write({**block, "audio": "", "text": ""})
    index = json.loads((tmp_path / "lib" / "index.json").read_text())
    assert len(index["shards"]) == 1
    assert (tmp_path / "mine" / "s1.mds").read_bytes() == (tmp_path / "lib" / "shard.00000.mds").read_bytes()
    assert index["shards"][0] == {**entry, "raw_data": {**entry["raw_data"], "basename": "shard.00000.mds"}}
    assert not list((tmp_path / "mine").glob(".*"))  # no temp file left beside it


def test_zero_blocks_is_a_valid_empty_file(tokenizer: SpeechTokenizer, tmp_path: Path) -> None:
    rows = corpus(np.random.default_rng(4), 3, texts=["x", "y", "z"])  # all too short
    summary = mtts_part("s1", rows, tokenizer, settings_with(), tmp_path / "s1.mds", "s1.mds")
    config = mds_config()
    data = (tmp_path / "s1.mds").read_bytes()
    assert data == np.array([0, 8 + len(config)], np.uint32).tobytes() + config
    assert summary["blocks"] == summary["mds"]["samples"] == 0 and summary["mds"]["raw_data"]["bytes"] == len(data)
    assert summary["dropped_by_reason"] == {"text_too_short": 3}
    assert merge_index([summary["mds"]]) == {"version": 2, "shards": []}


def test_local_dataset_opens_merged_parts(tokenizer: SpeechTokenizer, uint32_encoding, tmp_path: Path) -> None:
    from streaming import LocalDataset

    rng = np.random.default_rng(5)
    settings = settings_with(pairs_per_speaker=20, block_tokens=2048)
    root = tmp_path / "multilingual_tts" / "train"
    expected, entries = [], []
    for shard, n in (("a", 40), ("group/b", 30), ("c", 0)):
        rows = corpus(rng, max(n, 1), shard=shard).iloc[:n]
        packed = packed_of(shard, rows, tokenizer, settings)
        entries.append(write_mds(root / f"{shard}.mds", packed, f"{shard}.mds"))
        expected += list(packed)
    (root / "index.json").write_text(json.dumps(merge_index(entries)))
    assert [e["samples"] for e in entries][2] == 0 and len(merge_index(entries)["shards"]) == 2
    dataset = LocalDataset(local=str(root))
    assert len(dataset) == len(expected) > 10
    for i, block in enumerate(expected):
        sample = dataset[i]
        assert sample["audio"] == sample["text"] == ""
        for column in ("input_ids", "position_ids", "attention_mask"):
            assert sample[column].dtype == np.uint32 and np.array_equal(sample[column], block[column])


def test_blocks_hold_the_rows_and_decode_to_the_stored_tokens(
    tokenizer: SpeechTokenizer, uint32_encoding, tmp_path: Path
) -> None:
    from streaming import LocalDataset

    rng = np.random.default_rng(6)
    rows = corpus(rng, 80, tokens=(50, 800))
    settings = settings_with(pairs_per_speaker=15, block_tokens=3000)
    summary = mtts_part("s1", rows, tokenizer, settings, tmp_path / "s1.mds", "s1.mds")
    (tmp_path / "index.json").write_text(json.dumps(merge_index([summary["mds"]])))
    dataset = LocalDataset(local=str(tmp_path))
    built = build_rows("s1", rows, tokenizer, settings)
    names = speaker_names(rows, settings.speaker_format)[0]

    def decode(ids: np.ndarray) -> str:
        return tokenizer.backend.decode(ids.tolist(), skip_special_tokens=False)

    base, stored = tokenizer.speech_base, rows["neucodec_tokens"]
    r = tokens = 0
    for i in range(len(dataset)):
        block = dataset[i]
        ids, pos, mask = block["input_ids"], block["position_ids"], block["attention_mask"]
        assert int(mask.sum()) == len(ids) == len(pos) <= settings.block_tokens
        tokens += len(ids)
        assert np.array_equal(pos, np.concatenate([np.arange(m) for m in mask.tolist()]))
        for row in np.split(ids, np.cumsum(mask)[:-1]):
            ref, target = int(built.rows.ref[r]), int(built.rows.target[r])
            assert row[-1] == tokenizer.im_end
            parts = np.split(row, np.flatnonzero(row == tokenizer.speech_start) + 1)
            speech = [p[p >= base] - base for p in parts[1:]]
            segments = [target] if ref < 0 else [ref, target]
            assert len(speech) == len(segments)
            for codes, segment in zip(speech, segments, strict=True):
                assert np.array_equal(codes, stored.iloc[segment])
            text = rows["text"].iloc[target].strip()
            head = parts[-2][np.flatnonzero(parts[-2] == tokenizer.im_end)[-1] + 1 :] if ref >= 0 else parts[0]
            words = f"{names[target]}: {text}" if ref < 0 else text
            assert decode(head) == f"{IM_START}{words}{SPEECH_START}"
            if ref >= 0:
                assert decode(parts[0]) == f"{IM_START}{rows['text'].iloc[ref].strip()}{SPEECH_START}"
            r += 1
    assert r == len(built.rows) == summary["rows"]["tts"] + summary["rows"]["voice_cloning"]
    assert tokens == summary["tokens"] and summary["speech_tokens"] == int(built.rows.speech.sum())
    assert summary["blocks"] == len(dataset)


def test_pack_edge_cases() -> None:
    assert pack(np.array([4, 6, 10, 1]), 10).tolist() == [0, 2, 3, 4]  # exact fits stay
    assert pack(np.array([5, 6, 4]), 10).tolist() == [0, 1, 3]  # no reordering to fill a block
    assert pack(np.array([3, 11, 3]), 10).tolist() == [0, 1, 2, 3]  # a row over the block: a block of its own
    assert pack(np.zeros(0, np.int64), 10).tolist() == [0]


def test_exact_fit_and_rows_longer_than_a_block(tokenizer: SpeechTokenizer, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows = corpus(rng, 12, texts=[f"utterance number {i}" for i in range(12)], speakers=["a"] * 12, tokens=(100, 300))
    lengths = build_rows("s1", rows, tokenizer, settings_with(pairs_per_speaker=0)).rows.lengths
    exact = settings_with(pairs_per_speaker=0, block_tokens=int(lengths[0] + lengths[1]))
    packed = packed_of("s1", rows, tokenizer, exact)
    assert packed.bounds[1] == 2 and len(packed.block(0)["input_ids"]) == exact.block_tokens

    # one segment too long for a block; pairs only where both utterances fit
    counts = rows["token_count"].to_numpy()
    block = int(np.sort(lengths)[-2]) + 1
    longest = int(np.argmax(lengths))
    settings = settings_with(pairs_per_speaker=1000, block_tokens=block)
    summary = mtts_part("s1", rows, tokenizer, settings, tmp_path / "s1.mds", "s1.mds")
    dropped = summary["dropped"]
    too_long = [d for d in dropped if d["reason"] == "longer_than_block"]
    tts_drops = [d for d in too_long if not d["detail"].startswith("voice-cloning")]
    assert [d["segment_id"] for d in tts_drops] == [rows["segment_id"].iloc[longest]]
    vc_drops = [d for d in too_long if d["detail"].startswith("voice-cloning")]
    assert vc_drops and all(" -> " in d["detail"] and d["segment_id"] in d["detail"] for d in vc_drops)
    assert summary["rows"]["tts"] == 11
    groups = pd.Series(np.delete(speaker_names(rows, settings.speaker_format)[0], longest)).value_counts()
    assert summary["rows"]["voice_cloning"] + len(vc_drops) == summary["pairs"]["kept"] == (groups * (groups - 1)).sum()
    assert summary["dropped_by_reason"] == {"longer_than_block": len(too_long)}
    built = build_rows("s1", rows, tokenizer, settings)
    assert built.rows.lengths.max() <= block and longest not in built.rows.target.tolist()
    assert counts.sum() > 0


def test_pairs_same_speaker_distinct_texts_both_orders_capped_and_seeded(tokenizer: SpeechTokenizer) -> None:
    rng = np.random.default_rng(8)
    n = 60
    speakers: list[str | None] = [["a", "b", "c", None][i % 4] for i in range(n)]
    texts = [f"sentence number {i % 9} here" for i in range(n)]  # repeated texts
    texts[4] = "tiny"  # under min_ref_chars: a TTS row, never in a pair
    rows = corpus(rng, n, texts=texts, speakers=speakers)
    names = speaker_names(rows, "{dataset}_{speaker}")[0]
    stripped = rows["text"].str.strip().tolist()

    def pairs(settings: MttsSettings) -> list[tuple[int, int]]:
        built = build_rows("s1", rows, tokenizer, settings)
        vc = built.rows.ref >= 0
        return list(zip(built.rows.ref[vc].tolist(), built.rows.target[vc].tolist(), strict=True))

    everything = pairs(settings_with(pairs_per_speaker=10_000))
    assert len(set(everything)) == len(everything)
    allowed = {
        (i, j)
        for i in range(n)
        for j in range(n)
        if speakers[i] is not None
        and names[i] == names[j]
        and stripped[i] != stripped[j]
        and min(len(stripped[i]), len(stripped[j])) >= 5
    }
    assert set(everything) == allowed and all((j, i) in allowed for i, j in allowed)
    capped = pairs(settings_with(pairs_per_speaker=7))
    assert set(capped) <= allowed and len(set(capped)) == len(capped)
    per_speaker = pd.Series([names[i] for i, _ in capped]).value_counts()
    possible = pd.Series([names[i] for i, _ in allowed]).value_counts()
    assert per_speaker.to_dict() == {name: min(7, p) for name, p in possible.items()}
    assert possible.max() > 7 and possible.min() < 7
    assert capped == pairs(settings_with(pairs_per_speaker=7))
    assert capped != pairs(settings_with(pairs_per_speaker=7, seed=1))
    assert pairs(settings_with(pairs_per_speaker=0)) == []
    summary = build_rows("s1", rows, tokenizer, settings_with(pairs_per_speaker=7)).pairs
    assert summary == {"speakers": len(per_speaker), "possible": len(allowed), "kept": len(capped)}


def test_speaker_pairs_sample_without_listing_all() -> None:
    n, cap = 200_000, 50_000
    texts = np.arange(n) % 1000
    texts[:150_000] = 7  # a group of equal texts: most index pairs are not pairs
    start = time.perf_counter()
    ref, target, possible = speaker_pairs(texts, cap, np.random.default_rng(0))
    assert time.perf_counter() - start < 5
    counts = np.bincount(texts)
    assert possible == n * n - int((counts.astype(np.int64) ** 2).sum())
    assert len(ref) == cap and np.all(texts[ref] != texts[target])
    assert len(np.unique(ref * n + target)) == cap
    ref2, target2, _ = speaker_pairs(texts, cap, np.random.default_rng(0))
    assert np.array_equal(ref, ref2) and np.array_equal(target, target2)


def test_every_drop_is_counted_by_reason(tokenizer: SpeechTokenizer, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    n = 40
    texts = [sample_text(rng, 3, "en") for _ in range(n)]
    texts[1] = " a "  # too short once stripped
    texts[2] = " ".join(["word"] * 400)  # more words than speech tokens
    texts[4] = "x" * 100  # one long word: 100 characters, 20 tokens, kept
    durations = np.full(n, 3.0)
    durations[3] = 20.5  # over max_seconds
    rows = corpus(rng, n, texts=texts, durations=durations, tokens=(20, 21))
    settings = settings_with(pairs_per_speaker=5)
    summary = mtts_part("s1", rows, tokenizer, settings, tmp_path / "s1.mds", "s1.mds")
    ids = rows["segment_id"].tolist()
    assert [(d["segment_id"], d["reason"]) for d in summary["dropped"]] == [
        (ids[1], Reason.TEXT_TOO_SHORT.value),
        (ids[2], Reason.MORE_WORDS_THAN_TOKENS.value),
        (ids[3], Reason.TOO_LONG.value),
    ]
    assert summary["dropped_by_reason"] == {
        "text_too_short": 1,
        "more_words_than_tokens": 1,
        "longer_than_max_seconds": 1,
    }
    assert "400 words" in summary["dropped"][1]["detail"] and "20.50 s" in summary["dropped"][2]["detail"]
    assert summary["rows"]["tts"] == n - 3
    assert summary["rows"]["voice_cloning"] == summary["pairs"]["kept"] > 0
    json.dumps(summary)  # the shard report is JSON


def test_a_part_over_what_one_mds_file_can_address_is_refused(
    tokenizer: SpeechTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = corpus(np.random.default_rng(10), 20)
    packed = packed_of("s1", rows, tokenizer, settings_with(pairs_per_speaker=5))
    monkeypatch.setattr(mtts_mds, "MDS_SIZE_LIMIT", 10_000)
    with pytest.raises(MttsError, match=r"train/s1.mds: \d+ bytes, over the 10000 an MDS file can address"):
        write_mds(tmp_path / "s1.mds", packed, "train/s1.mds")
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


def test_default_settings_are_the_config_schemas() -> None:
    """The schema owns the defaults: the settings built from them are those Snakemake's validation fills in."""
    from snakemake.utils import validate

    from neucodec_workflow.dataset.formats import SCHEMA, mtts_settings, neutts_settings

    config = {"corpus": "c", "output": "o"}
    validate(config, str(SCHEMA))
    assert {fmt: schema_defaults(fmt) for fmt in (MULTILINGUAL_TTS, NEUTTS)} == {
        fmt: config["sft"][fmt] for fmt in (MULTILINGUAL_TTS, NEUTTS)
    }
    assert (
        mtts_settings(config["sft"]) == DEFAULTS
        and DEFAULTS.block_tokens == config["sft"][MULTILINGUAL_TTS]["block_tokens"]
    )
    assert neutts_settings(config["sft"]) == NeuttsSettings.from_config(schema_defaults(NEUTTS))
