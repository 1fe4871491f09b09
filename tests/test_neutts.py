"""The neutts format with the real espeak-ng: NeuTTS's own filters (first failing check counted), phonemes as its
trainer computes them (batched per voice, equal to one call per row), language codes to voices, the part written
atomically and read back with ``datasets`` through the card's ``configs``, and the card's reading code run on it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neucodec_workflow.dataset import neutts
from neucodec_workflow.dataset.formats import NEUTTS, schema_defaults
from neucodec_workflow.dataset.neutts import (
    READER,
    VOICES,
    NeuttsError,
    NeuttsSettings,
    card_text,
    check_settings,
    espeak_voices,
    features,
    neutts_part,
    phonemize,
    upstream_reason,
    voice_of,
)
from neucodec_workflow.record.records import Reason

R = Reason
DEFAULTS = NeuttsSettings.from_config(schema_defaults(NEUTTS))  # what the workflow runs with by default


def settings_with(**changes: Any) -> NeuttsSettings:
    """The default settings (the config schema's), with ``changes``."""
    return replace(DEFAULTS, **changes)


@pytest.fixture(scope="module")
def espeak() -> None:
    """The tests that phonemize need espeak-ng itself: fail (never skip) without it."""
    if not neutts._espeak_backend().is_available():
        pytest.fail("espeak-ng is not installed (phonemizer cannot load libespeak-ng): run `make espeak`")


def data_filter(sample):
    """neuphonic/neutts-air examples/finetune.py @f93b52e0, verbatim: the reference for upstream_reason."""
    ACRONYM = re.compile(r"(?:[a-zA-Z]\.){2,}")
    ACRONYM_NO_PERIOD = re.compile(r"(?:[A-Z]){2,}")
    text = sample["text"]
    if len(text) == 0:
        return False
    if re.search(r"\d", text):
        return False
    if re.search(ACRONYM, text) or re.search(ACRONYM_NO_PERIOD, text):
        return False
    if text[-1] not in ".,?!":
        return False
    if "£" in text or "$" in text:
        return False
    return True


FILTER_TABLE = [
    ("", R.NEUTTS_EMPTY_TEXT),
    ("It costs $5.", R.NEUTTS_DIGIT),  # digit and currency: the digit check comes first
    ("Room 101", R.NEUTTS_DIGIT),
    ("Room ٣.", R.NEUTTS_DIGIT),  # upstream's \d is Unicode
    ("NASA costs $5", R.NEUTTS_DIGIT),
    ("The U.S. army.", R.NEUTTS_ACRONYM),
    ("We met at a.m. on Monday.", R.NEUTTS_ACRONYM),
    ("NASA launched.", R.NEUTTS_ACRONYM),
    ("NASA launched", R.NEUTTS_ACRONYM),  # before the final-punctuation check
    ("I am OK.", R.NEUTTS_ACRONYM),
    ("Hello there", R.NEUTTS_NO_FINAL_PUNCTUATION),
    ("Hello there;", R.NEUTTS_NO_FINAL_PUNCTUATION),
    ("你好。", R.NEUTTS_NO_FINAL_PUNCTUATION),  # upstream is English-only: a full-width stop fails too
    ("It costs five $.", R.NEUTTS_CURRENCY),
    ("Five £ only!", R.NEUTTS_CURRENCY),
    ("Hello there.", None),
    ("Is it?", None),
    ("Wow!", None),
    ("Well,", None),
    ("Mr. Smith is Here.", None),  # one letter-period pair, no two capitals in a row
    ("Привет мир.", None),  # [A-Z] is ASCII: upstream keeps all-caps Cyrillic too
]


@pytest.mark.parametrize(("text", "reason"), FILTER_TABLE)
def test_filters_reproduce_upstream_and_name_the_first_failure(text, reason):
    got = upstream_reason(text)
    assert (got[0] if got else None) == reason
    assert (got is None) == data_filter({"text": text})


def test_filter_details_say_what_failed():
    assert upstream_reason("The U.S. army.") == (R.NEUTTS_ACRONYM, "'U.S.'")
    assert upstream_reason("NASA launched.") == (R.NEUTTS_ACRONYM, "'NASA'")
    assert upstream_reason("It costs $5.") == (R.NEUTTS_DIGIT, "'5'")
    assert upstream_reason("Hello there") == (R.NEUTTS_NO_FINAL_PUNCTUATION, "ends in 'e'")


KNOWN_PHONES = [
    ("en-us", "Hello world.", "həlˈoʊ wˈɜːld."),
    ("en-us", "The quick brown fox jumps over the lazy dog.", "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ."),
    ("en-us", "How are you, my friend?", "hˈaʊ ɑːɹ juː, maɪ fɹˈɛnd?"),
    ("ms", "Selamat pagi, apa khabar?", "səlˈamat pˈaɡi, ˈapə xˈabar?"),
    ("es", "Hola, ¿cómo estás?", "ˈola, ¿kˈomo estˈas?"),
]


def test_phonemes_of_known_sentences(espeak):
    """Expected strings from espeak-ng 1.51 (Debian's), checked by eye: another espeak-ng release may differ."""
    for voice in ("en-us", "ms", "es"):
        texts = [t for v, t, _ in KNOWN_PHONES if v == voice]
        assert phonemize(texts, voice) == [p for v, _, p in KNOWN_PHONES if v == voice]


def test_batched_phonemes_equal_one_call_per_row_as_upstream(espeak):
    texts = [
        "Hello world.",
        "...",
        "!",
        "¿Qué?",
        "“Hi,” she said.",
        "(Hello) world.",
        "line one\nline two.",
        "Well, well, well... what now?",
        "Привет мир.",
        "你好。",
        "Café au lait — naïve, isn't it?",
        "  padded  .",
    ]
    backend = neutts._backend("en-us")
    one_by_one = [" ".join(backend.phonemize([t])[0].split()) for t in texts]
    assert phonemize(texts, "en-us") == one_by_one
    assert phonemize([], "en-us") == []
    with pytest.raises(ValueError, match="empty text"):  # phonemizer would shift every later line
        phonemize(["Hello.", "", "World."], "en-us")


def test_language_codes_to_voices(espeak):
    s = settings_with()
    cases = {
        "en": "en-us",
        "EN": "en-us",
        "en-US": "en-us",
        "en_GB": "en-us",  # every English is en-us, as upstream
        "eng": "en-us",
        "English": "en-us",
        "zh": "cmn",
        "zh-CN": "cmn",
        "cmn": "cmn",
        "ms": "ms",
        "zsm": "ms",
        "ta": "ta",
        "fr": "fr-fr",
        "pt-BR": "pt-br",
        "es-MX": "es-419",
        "de-AT": "de",
        "af": "af",  # not in the map: an espeak-ng voice as it is
        "tlh": None,
        "xx-YY": None,
        None: "en-us",
        "": "en-us",
    }
    assert {code: voice_of(code, s) for code in cases} == cases
    custom = settings_with(default_language="ms", language_voices={"my": "ms", "EN": "en-GB"})
    assert voice_of("my", custom) == "ms" and voice_of(None, custom) == "ms"
    assert voice_of("en-AU", custom) == "en-gb"  # an override of the primary subtag beats the built-in map
    assert set(VOICES.values()) <= set(espeak_voices().values())  # the built-in map names only real voices


def test_config_errors_are_raised_not_counted(espeak):
    with pytest.raises(NeuttsError, match="lacks.*'xx': 'no-such-voice'"):
        check_settings(settings_with(language_voices={"xx": "no-such-voice"}))
    with pytest.raises(NeuttsError, match="default_language 'tlh' has no espeak-ng voice"):
        check_settings(settings_with(default_language="tlh"))
    with pytest.raises(NeuttsError, match="max_seconds"):
        check_settings(settings_with(max_seconds=0))
    check_settings(settings_with(default_language="ms", language_voices={"my": "MS"}, max_seconds=20.0))


def test_missing_espeak_says_make_espeak(monkeypatch):
    class NoLibrary:
        @staticmethod
        def supported_languages():
            raise RuntimeError("failed to find espeak library")

    espeak_voices.cache_clear()
    monkeypatch.setattr(neutts, "_espeak_backend", lambda: NoLibrary)
    try:
        with pytest.raises(NeuttsError, match="make espeak"):
            check_settings(settings_with())
    finally:
        espeak_voices.cache_clear()


def tokens(n: int, seed: int) -> np.ndarray:
    """Codes as shard_rows holds them (uint16), the extremes 0 and 65535 included."""
    codes = np.random.default_rng(seed).integers(0, 65536, size=n).astype(np.uint16)
    codes[:2] = (0, 65535)
    return codes


def shard_rows(items: list[tuple[str, str | None, str | None, float]]) -> pd.DataFrame:
    """Rows as ``sft.shard_rows`` returns them: (segment_id, text, language, duration); tokens differ per row."""
    n = len(items)
    return pd.DataFrame(
        {
            "segment_id": [i[0] for i in items],
            "text": pd.array([i[1] for i in items], dtype="string"),
            "language": pd.array([i[2] for i in items], dtype="string"),
            "speaker": pd.array(["spk"] * n, dtype="string"),
            "dataset": pd.array([None] * n, dtype="string"),
            "duration": np.array([i[3] for i in items], dtype="float64"),
            "neucodec_tokens": pd.Series([tokens(10 + k, seed=k) for k in range(n)], dtype=object),
            "token_count": np.array([10 + k for k in range(n)], dtype="int32"),
            "shard": "s0",
        }
    )


ROWS = [
    ("ok-en", "  Hello world.  ", "en", 1.5),  # stripped, then kept
    ("digit", "It costs $5.", "tlh", 30.0),  # fails everything: counted once, under the first check
    ("acr", "The U.S. army.", "en", 1.0),
    ("caps", "NASA launched.", "en", 1.0),
    ("punct", "Hello there", "en", 1.0),
    ("money", "It costs five $.", "en", 1.0),
    ("long", "Far too long.", "tlh", 12.0),  # longer than max_seconds before its language is looked at
    ("ok-ms", "Selamat pagi, apa khabar?", "ms", 2.0),
    ("ok-es", "Hola, ¿cómo estás?", "es", 10.0),  # == max_seconds is kept
    ("no-voice", "Qapla'.", "tlh", 1.0),
    ("ok-null", "How are you, my friend?", None, 2.5),  # default language
    ("marks", "...", "en", 1.0),  # phonemes of punctuation only
    ("ok-gb", "The quick brown fox jumps over the lazy dog.", "en-GB", 3.0),
]
SETTINGS = settings_with(max_seconds=10.0)
KEPT = ["ok-en", "ok-ms", "ok-es", "ok-null", "ok-gb"]
PHONES = {seg: dict((t, p) for _, t, p in KNOWN_PHONES)[text.strip()] for seg, text, _, _ in ROWS if seg in KEPT}


def test_part_loads_through_the_card_with_phones_and_codes(espeak, tmp_path):
    from datasets import load_dataset

    rows = shard_rows(ROWS)
    root = tmp_path / "neutts"
    part = root / "data" / "train" / "en" / "s0.parquet"
    summary = neutts_part("en/s0", rows, SETTINGS, part, rows_per_row_group=2)

    assert summary["rows"] == len(KEPT)
    assert summary["dropped_by_reason"] == {
        "neutts_acronym": 2,
        "neutts_currency_symbol": 1,
        "neutts_digit": 1,
        "neutts_empty_phonemes": 1,
        "neutts_longer_than_max_seconds": 1,
        "neutts_no_espeak_voice": 1,
        "neutts_no_final_punctuation": 1,
    }
    assert [(d["segment_id"], d["reason"]) for d in summary["dropped"]] == [
        ("digit", "neutts_digit"),
        ("acr", "neutts_acronym"),
        ("caps", "neutts_acronym"),
        ("punct", "neutts_no_final_punctuation"),
        ("money", "neutts_currency_symbol"),
        ("long", "neutts_longer_than_max_seconds"),
        ("no-voice", "neutts_no_espeak_voice"),
        ("marks", "neutts_empty_phonemes"),
    ]
    assert "'tlh'" in summary["dropped"][6]["detail"]
    assert summary["languages"] == {"en-us": 3, "es": 1, "ms": 1}
    assert summary["bytes"] == part.stat().st_size
    assert summary["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
    stored = dict(zip(rows["segment_id"], rows["neucodec_tokens"], strict=True))
    assert summary["hours"] == pytest.approx(sum(len(stored[s]) for s in KEPT) * 0.02 / 3600)
    assert [p.name for p in part.parent.iterdir()] == ["s0.parquet"]  # no temp file left beside it
    assert pq.ParquetFile(part).metadata.num_row_groups == 3
    assert pq.read_schema(part).field("codes").type.value_type.bit_width == 32

    (root / "README.md").write_text(card_text({"train": summary}, 1, summary["dropped_by_reason"]))
    ds = load_dataset(str(root), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features == features()
    assert ds["segment_id"] == KEPT  # input order
    by_id = {r["segment_id"]: r for r in ds}
    for seg in KEPT:
        assert by_id[seg]["codes"] == stored[seg].tolist()
        assert by_id[seg]["phones"] == PHONES[seg]
    assert by_id["ok-en"]["text"] == "Hello world."  # stripped
    assert [by_id[s]["language"] for s in KEPT] == ["en-us", "ms", "es", "en-us", "en-us"]
    assert by_id["ok-null"]["duration"] == 2.5
    assert all(data_filter(r) for r in ds)  # upstream's own filter keeps every written row


def test_texts_holding_prompt_tokens_are_left_out(espeak, tmp_path):
    """A transcript holding a token of the prompt's kind (<|im_end|>, <|speech_12|> ...) is no transcript of the speech
    and would be read as that token: left out under its own reason, after NeuTTS's own filters, counted."""
    rows = shard_rows(
        [
            ("tok", "She said <|im_end|> and left.", "en", 1.0),
            ("eot", "The end <|endoftext|> here.", "en", 1.0),  # (<|TEXT_PROMPT_START|>: an acronym first)
            ("both", "<|speech_12|> here.", "en", 1.0),  # a digit: NeuTTS's own filter names it first
            ("ok", "A pipe | and a <b>tag</b> are fine.", "en", 1.0),
        ]
    )
    summary = neutts_part("s0", rows, settings_with(), tmp_path / "s0.parquet", rows_per_row_group=10)
    assert [(d["segment_id"], d["reason"]) for d in summary["dropped"]] == [
        ("tok", "text_has_special_tokens"),
        ("eot", "text_has_special_tokens"),
        ("both", "neutts_digit"),
    ]
    assert "'<|im_end|>'" in summary["dropped"][0]["detail"]
    assert summary["dropped_by_reason"] == {"neutts_digit": 1, "text_has_special_tokens": 2}
    assert summary["rows"] == 1


def test_empty_parts_are_valid(espeak, tmp_path):
    """A part whose rows all fail, or a shard without rows in a split, is an empty part that loads beside the others;
    a split without any row is left out of the card's configs (load_dataset cannot load it)."""
    from datasets import load_dataset

    root = tmp_path / "neutts"
    parts = {
        ("train", "s0"): ROWS[:3],  # one row passes
        ("train", "s1"): ROWS[1:3],  # every row fails
        ("train", "s2"): [],  # no row at all
        ("validation", "s0"): [],
    }
    summaries = {
        key: neutts_part(key[1], shard_rows(items), SETTINGS, root / "data" / key[0] / f"{key[1]}.parquet", 100)
        for key, items in parts.items()
    }
    assert [s["rows"] for s in summaries.values()] == [1, 0, 0, 0]
    failed = summaries["train", "s1"]
    assert failed["dropped_by_reason"] == {"neutts_acronym": 1, "neutts_digit": 1} and failed["languages"] == {}
    none = summaries["train", "s2"]
    assert none == {**none, "dropped_by_reason": {}, "dropped": [], "hours": 0.0, "languages": {}}
    for split, shard in parts:
        path = root / "data" / split / f"{shard}.parquet"
        assert pq.read_schema(path).names == list(features())
        assert pq.ParquetFile(path).metadata.num_row_groups == (1 if shard == "s0" and split == "train" else 0)
    splits = {
        "train": {"rows": 1, "bytes": sum(s["bytes"] for (sp, _), s in summaries.items() if sp == "train")},
        "validation": {"rows": 0, "bytes": summaries["validation", "s0"]["bytes"]},
    }
    card = card_text(splits, 3, {"neutts_digit": 2, "neutts_acronym": 2})
    assert "data/train/**/*.parquet" in card and "data/validation" not in card and "| validation | 0 |" in card
    (root / "README.md").write_text(card)
    ds = load_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"] and ds["train"]["segment_id"] == ["ok-en"]
    assert ds["train"].features == features()
    files = [str(root / "data" / "train" / f"{s}.parquet") for s in ("s1", "s0", "s2")]
    alone = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert alone["segment_id"] == ["ok-en"]
    assert "nothing to load" in card_text({"train": {"rows": 0, "bytes": 10}}, 1, {})


class FakeTokenizer:
    """Enough of a tokenizer for finetune.py's preprocessing, stateless (so a datasets cache hit changes nothing):
    fixed ids for the special tokens, 10 + code for ``<|speech_{code}|>``, 100000 + code point for a character."""

    pad_token_id = 0
    SPECIAL = {
        "<|SPEECH_GENERATION_START|>": 1,
        "<|SPEECH_GENERATION_END|>": 2,
        "<|TEXT_PROMPT_START|>": 3,
        "<|TEXT_PROMPT_END|>": 4,
    }

    def convert_tokens_to_ids(self, token: str) -> int:
        if token in self.SPECIAL:
            return self.SPECIAL[token]
        if m := re.fullmatch(r"<\|speech_(\d+)\|>", token):
            return 10 + int(m.group(1))
        assert len(token) == 1, token
        return 100_000 + ord(token)

    def encode(self, text: str) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in re.findall(r"<\|[^|]+\|>|.", text, flags=re.S)]

    def decode(self, ids: list[int]) -> str:
        names = {i: t for t, i in self.SPECIAL.items()}
        return "".join(
            names[i] if i in names else f"<|speech_{i - 10}|>" if i < 100_000 else chr(i - 100_000) for i in ids if i
        )


def test_card_reading_code_gives_finetune_rows(espeak, tmp_path):
    import datasets

    rows = shard_rows(ROWS)
    root = tmp_path / "neutts"
    summary = neutts_part("s0", rows, SETTINGS, root / "data" / "train" / "s0.parquet", 100)
    card = card_text({"train": summary}, 1, summary["dropped_by_reason"])
    assert "data/train/**/*.parquet" in card and "list: int32" in card and READER in card
    assert "| train | 5 |" in card and "neutts_empty_phonemes" in card
    (root / "README.md").write_text(card)

    namespace: dict = {}
    exec(READER, namespace)  # the card's code, as a trainer pastes it
    tokenizer = FakeTokenizer()
    datasets.disable_caching()  # run the map, never a cached result of an earlier run
    try:
        train = namespace["neutts_train_dataset"](str(root), tokenizer, max_len=400)
    finally:
        datasets.enable_caching()
    assert train.column_names == ["input_ids", "labels", "attention_mask"]
    start = tokenizer.SPECIAL["<|SPEECH_GENERATION_START|>"]
    stored = dict(zip(rows["segment_id"], rows["neucodec_tokens"], strict=True))
    for seg, row in zip(KEPT, train, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == 400 and ids.index(start) == labels.index(start)
        assert (
            all(v == -100 for v in labels[: ids.index(start)]) and labels[ids.index(start) :] == ids[ids.index(start) :]
        )
        text = tokenizer.decode(ids)
        codes = [int(c) for c in re.findall(r"<\|speech_(\d+)\|>", text)]
        assert codes == stored[seg].tolist()
        assert text == (
            f"user: Convert the text to speech:<|TEXT_PROMPT_START|>{PHONES[seg]}<|TEXT_PROMPT_END|>\nassistant:"
            f"<|SPEECH_GENERATION_START|>{''.join(f'<|speech_{c}|>' for c in stored[seg])}<|SPEECH_GENERATION_END|>"
        )
        assert sum(row["attention_mask"]) == len([i for i in ids if i != 0])
