"""The NeuTTS format (neuphonic/neutts-air, neuphonic/neutts): each shard's rows that pass NeuTTS's own filters
(``examples/finetune.py``), with the espeak-ng phonemes its trainer would compute stored in ``phones``, as
``data/{split}/{shard}.parquet`` parts; the ``README.md`` card's ``configs`` glob the parts, so
``datasets.load_dataset(<directory>)`` reads them.

A row is left out under the first of these it fails, in this order (counted by reason, listed in the shard report):
the upstream filters in upstream order — empty text, a digit (``\\d``), an acronym (``(?:[a-zA-Z]\\.){2,}`` or
``[A-Z]{2,}``), a last character not in ``.,?!``, a ``£`` or ``$`` — then a text holding a token of the prompt's kind
(``<|...|>``, ``SPECIAL_TOKEN``), a duration over ``max_seconds`` (when set),
a language without an espeak-ng voice, and phonemes with nothing but punctuation. The text is stripped of leading and
trailing whitespace first (upstream checks the raw text, so ``"Hello. "`` would fail its final-punctuation check for
nothing) and written stripped: upstream's ``data_filter`` passes every written row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neucodec_workflow.dataset.codecs import codec_lines
from neucodec_workflow.record.contract import SECONDS_PER_TOKEN, publishing
from neucodec_workflow.record.records import Reason, Reject

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("text", pa.string()),
        ("phones", pa.string()),
        ("codes", pa.list_(pa.int32())),  # 0-65535; finetune.py formats each as <|speech_{code}|>
        ("duration", pa.float64()),
        ("language", pa.string()),  # the espeak-ng voice that made `phones`
    ]
)

# examples/finetune.py @f93b52e0, verbatim
ACRONYM = re.compile(r"(?:[a-zA-Z]\.){2,}")
ACRONYM_NO_PERIOD = re.compile(r"(?:[A-Z]){2,}")
DIGIT = re.compile(r"\d")
FINAL_PUNCTUATION = ".,?!"
CURRENCY = ("£", "$")
# the syntax of the tokens the NeuTTS prompt is made of (<|TEXT_PROMPT_START|>, <|speech_12|>, <|im_end|>, ...): a
# text holding one is no transcript of the speech (its phonemes would spell the markup), and a trainer that puts text
# in the prompt would read it as that token
SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]*\|>")

# EspeakBackend's settings in finetune.py; only the voice differs by language
BACKEND = {
    "preserve_punctuation": True,
    "with_stress": True,
    "words_mismatch": "ignore",
    "language_switch": "remove-flags",
}
# phonemizer's Punctuation.default_marks(): phones made of these alone carry no speech
MARKS = frozenset(';:,.!?¡¿—…"«»“”(){}[]')

# espeak-ng voice -> the codes and names corpora use for its language (ISO 639-1, 639-2/B and T, 639-3, English name)
_ALIASES: dict[str, tuple[str, ...]] = {
    "en-us": ("en", "eng", "english"),  # every English, of any region: upstream's voice and the models' phone set
    "ms": ("msa", "may", "zsm", "malay", "bahasa melayu"),
    "id": ("ind", "indonesian", "bahasa indonesia"),
    "cmn": ("zh", "zho", "chi", "chinese", "mandarin"),
    "yue": ("zh-yue", "cantonese"),
    "ta": ("tam", "tamil"),
    "hi": ("hin", "hindi"),
    "ru": ("rus", "russian"),
    "fr-fr": ("fr", "fra", "fre", "french"),
    "fr-be": (),
    "fr-ch": (),
    "de": ("deu", "ger", "german"),
    "es": ("spa", "spanish"),
    "es-419": ("es-mx", "es-us", "es-ar", "es-co", "es-cl", "es-pe"),
    "pt": ("por", "portuguese"),
    "pt-br": (),
    "it": ("ita", "italian"),
    "nl": ("nld", "dut", "dutch"),
    "ja": ("jpn", "japanese"),
    "ko": ("kor", "korean"),
    "vi": ("vie", "vietnamese"),
    "th": ("tha", "thai"),
    "ar": ("ara", "arabic"),
    "fa": ("fas", "per", "persian"),
    "he": ("heb", "hebrew"),
    "tr": ("tur", "turkish"),
    "pl": ("pol", "polish"),
    "uk": ("ukr", "ukrainian"),
    "cs": ("ces", "cze", "czech"),
    "el": ("ell", "gre", "greek"),
    "ro": ("ron", "rum", "romanian"),
    "hu": ("hun", "hungarian"),
    "fi": ("fin", "finnish"),
    "sv": ("swe", "swedish"),
    "da": ("dan", "danish"),
    "nb": ("no", "nob", "nor", "norwegian"),
    "bn": ("ben", "bengali", "bangla"),
    "ur": ("urd", "urdu"),
    "te": ("tel", "telugu"),
    "ml": ("mal", "malayalam"),
    "mr": ("mar", "marathi"),
    "gu": ("guj", "gujarati"),
    "kn": ("kan", "kannada"),
    "pa": ("pan", "punjabi"),
    "sw": ("swa", "swahili"),
}
VOICES: dict[str, str] = {alias: voice for voice, aliases in _ALIASES.items() for alias in (voice, *aliases)}

ESPEAK_MISSING = (
    "espeak-ng is not installed (phonemizer cannot load libespeak-ng): run `make espeak` "
    "(Debian/Ubuntu: apt-get install espeak-ng)"
)


class NeuttsError(RuntimeError):
    pass


@dataclass(frozen=True)
class NeuttsSettings:
    """The ``sft.neutts`` config (``from_config``: its defaults are the config schema's, their only owner): the
    language of rows without one, the corpus's language codes mapped to espeak-ng voices (over ``VOICES``), and an
    optional cap on a row's duration in seconds."""

    default_language: str
    language_voices: Mapping[str, str]
    max_seconds: float | None

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> NeuttsSettings:
        """The settings of a validated ``sft.neutts`` config section (Snakemake's ``validate`` fills in the schema's
        defaults)."""
        return cls(
            default_language=str(section["default_language"]),
            language_voices=dict(section["language_voices"]),
            max_seconds=None if section["max_seconds"] is None else float(section["max_seconds"]),
        )


def _norm(code: str) -> str:
    return " ".join(code.strip().lower().replace("_", "-").split())


def _espeak_backend() -> Any:
    """phonemizer's EspeakBackend class (imported on first use: phonemizer has no type information)."""
    from phonemizer.backend import EspeakBackend  # type: ignore[import-untyped, unused-ignore]

    return EspeakBackend


@functools.cache
def espeak_voices() -> dict[str, str]:
    """This espeak-ng's voices, lower-cased -> as espeak-ng spells them."""
    try:
        return {v.lower(): v for v in _espeak_backend().supported_languages()}
    except RuntimeError as exc:
        raise NeuttsError(ESPEAK_MISSING) from exc


@functools.cache
def espeak_version() -> str:
    espeak_voices()  # a clear error when espeak-ng is missing
    return ".".join(str(v) for v in _espeak_backend().version())


def _resolve(code: str, settings: NeuttsSettings) -> tuple[str | None, str]:
    """The voice for a language code and, when there is none, why."""
    voices = espeak_voices()
    key = _norm(code)
    primary = key.split("-")[0]
    overrides = {_norm(k): v for k, v in settings.language_voices.items()}
    for table, origin in ((overrides, "language_voices"), (VOICES, "built-in map")):
        for k in dict.fromkeys((key, primary)):
            if k in table:
                voice = voices.get(_norm(table[k]))
                return voice, "" if voice else f"{origin} gives {k!r} the voice {table[k]!r}, which espeak-ng lacks"
    for k in dict.fromkeys((key, primary)):
        if k in voices:
            return voices[k], ""
    return None, "not in the language map and not an espeak-ng voice"


def voice_of(language: str | None, settings: NeuttsSettings) -> str | None:
    """The espeak-ng voice that phonemizes a row of ``language`` (null or blank: ``settings.default_language``), or
    None. Codes are compared case-blind with ``_`` as ``-``; the first hit wins of: ``language_voices`` for the code,
    then for its primary subtag (``en-GB`` -> ``en``); the built-in map the same way; the code as an espeak-ng voice,
    then its primary subtag."""
    return _resolve(_code(language, settings), settings)[0]


def _code(language: Any, settings: NeuttsSettings) -> str:
    """A row's language code: its own, or the default when it is null or blank."""
    return settings.default_language if language is None or pd.isna(language) or not str(language).strip() else language


def check_settings(settings: NeuttsSettings) -> None:
    """Config errors, before any row: an override naming a voice espeak-ng lacks; a default language without a
    voice."""
    voices = espeak_voices()
    bad = {k: v for k, v in settings.language_voices.items() if _norm(v) not in voices}
    if bad:
        raise NeuttsError(
            f"sft.neutts.language_voices names voices that espeak-ng {espeak_version()} lacks: {bad} "
            "(its voices: `espeak-ng --voices`)"
        )
    voice, why = _resolve(settings.default_language, settings)
    if voice is None:
        raise NeuttsError(f"sft.neutts.default_language {settings.default_language!r} has no espeak-ng voice: {why}")
    if settings.max_seconds is not None and not settings.max_seconds > 0:
        raise NeuttsError(f"sft.neutts.max_seconds must be > 0 or null, not {settings.max_seconds!r}")


def upstream_reason(text: str) -> tuple[Reason, str] | None:
    """The first of finetune.py's ``data_filter`` checks that ``text`` fails, with what failed it; None if it
    passes."""
    if len(text) == 0:
        return Reason.NEUTTS_EMPTY_TEXT, ""
    if m := DIGIT.search(text):
        return Reason.NEUTTS_DIGIT, repr(m.group())
    if m := ACRONYM.search(text) or ACRONYM_NO_PERIOD.search(text):
        return Reason.NEUTTS_ACRONYM, repr(m.group())
    if text[-1] not in FINAL_PUNCTUATION:
        return Reason.NEUTTS_NO_FINAL_PUNCTUATION, f"ends in {text[-1]!r}"
    if found := [c for c in CURRENCY if c in text]:
        return Reason.NEUTTS_CURRENCY, " ".join(found)
    return None


@functools.cache
def _backend(voice: str) -> Any:
    espeak_voices()  # a clear error when espeak-ng is missing
    return _espeak_backend()(language=voice, **BACKEND)


def phonemize(texts: list[str], voice: str) -> list[str]:
    """finetune.py's phonemes of each text (one call for the batch; one backend per voice and process), whitespace
    collapsed. The texts must be non-empty: phonemizer drops an empty line and shifts the lines after it."""
    if not all(texts):
        raise ValueError("phonemize: an empty text would shift the phonemes of the texts after it")
    if not texts:
        return []
    out = _backend(voice).phonemize(texts)
    if len(out) != len(texts):
        raise NeuttsError(f"phonemizer returned {len(out)} lines for {len(texts)} texts (voice {voice})")
    return [" ".join(line.split()) for line in out]


def neutts_rows(rows: pd.DataFrame, settings: NeuttsSettings) -> tuple[pd.DataFrame, list[Reject]]:
    """The part's rows (``SCHEMA``'s columns, ``codes`` as the stored uint16 arrays, plus ``token_count``) in input
    order, and the rows left out, each under the first check it fails (module docstring)."""
    dropped: dict[Any, Reject] = {}
    texts = rows["text"].astype("string").fillna("").str.strip()
    voices: dict[Any, str] = {}
    resolved: dict[str, tuple[str | None, str]] = {}  # language code -> voice or why none
    for idx, seg, text, duration, language in zip(
        rows.index, rows["segment_id"], texts, rows["duration"], rows["language"], strict=True
    ):
        failed = upstream_reason(text)
        if failed is None and (token := SPECIAL_TOKEN.search(text)):
            failed = Reason.TEXT_HAS_SPECIAL_TOKENS, f"the text holds {token.group()!r}"
        if failed is None and settings.max_seconds is not None and duration > settings.max_seconds:
            failed = Reason.NEUTTS_TOO_LONG, f"{duration:.3f} s > {settings.max_seconds} s"
        if failed is None:
            code = _code(language, settings)
            if code not in resolved:
                resolved[code] = _resolve(code, settings)
            voice, why = resolved[code]
            if voice is not None:
                voices[idx] = voice
            else:
                shown = repr(code) if code is language else f"{language!r}, as the default {code!r}"
                failed = Reason.NEUTTS_NO_VOICE, f"language {shown}: {why}"
        if failed is not None:
            dropped[idx] = Reject(str(seg), *failed)
    phones: dict[Any, str] = {}
    by_voice: dict[str, list[Any]] = {}
    for idx, voice in voices.items():
        by_voice.setdefault(voice, []).append(idx)
    for voice, idxs in sorted(by_voice.items()):
        for idx, p in zip(idxs, phonemize([texts[i] for i in idxs], voice), strict=True):
            if set(p) - MARKS - {" "}:
                phones[idx] = p
            else:
                seg = str(rows.at[idx, "segment_id"])
                dropped[idx] = Reject(seg, Reason.NEUTTS_EMPTY_PHONEMES, f"voice {voice}: {p!r} for {texts[idx]!r}")
    kept = [i for i in rows.index if i in phones]
    out = pd.DataFrame(
        {
            "segment_id": rows.loc[kept, "segment_id"].astype(str),
            "text": texts[kept],
            "phones": pd.Series([phones[i] for i in kept], index=kept, dtype="string"),
            "codes": rows.loc[kept, "neucodec_tokens"],
            "duration": rows.loc[kept, "duration"].astype("float64"),
            "language": pd.Series([voices[i] for i in kept], index=kept, dtype="string"),
            "token_count": rows.loc[kept, "token_count"].astype("int64"),
        },
        index=kept,
    )
    return out.reset_index(drop=True), [dropped[i] for i in rows.index if i in dropped]


def _table(rows: pd.DataFrame) -> pa.Table:
    codes = [np.asarray(c) for c in rows["codes"]]
    offsets = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in codes], out=offsets[1:])
    values = np.concatenate(codes).astype(np.int32) if codes else np.zeros(0, np.int32)
    arrays = [
        pa.array(rows["segment_id"], pa.string()),
        pa.array(rows["text"], pa.string()),
        pa.array(rows["phones"], pa.string()),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        pa.array(rows["duration"], pa.float64()),
        pa.array(rows["language"], pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def provenance() -> dict[str, Any]:
    """How ``phones`` were made (in each part's parquet metadata under ``neutts``)."""
    from importlib.metadata import version

    return {"espeak_ng": espeak_version(), "phonemizer": version("phonemizer"), "backend": BACKEND}


def neutts_part(
    shard: str,
    rows: pd.DataFrame,
    settings: NeuttsSettings,
    path: Path,
    rows_per_row_group: int,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write one shard's part of one split (``rows`` from ``sft.shard_rows``) as a parquet file, atomically (zero rows
    is a valid, empty part); return its summary for the shard report: rows, bytes, sha256, hours, rows left out by
    reason and each of them, rows per espeak-ng voice, and the espeak-ng that made the phones. ``metadata``: more
    key-value metadata for the file (what shaped the part: ``formats.FormatWriter.fingerprint``)."""
    check_settings(settings)
    kept, dropped = neutts_rows(rows, settings)
    schema = SCHEMA.with_metadata({"neutts": json.dumps(provenance()), **(metadata or {})})
    with publishing(path) as tmp:
        if len(kept):
            table = _table(kept).replace_schema_metadata(schema.metadata)
            pq.write_table(table, tmp, row_group_size=rows_per_row_group, compression="zstd")
        else:  # no row group at all: datasets' parquet reader takes a 0-row group's size as its batch size
            pq.ParquetWriter(tmp, schema, compression="zstd").close()
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        size = tmp.stat().st_size
    by_reason = Counter(str(r.reason) for r in dropped)
    if dropped:
        log.info("shard %s: neutts left out %d of %d rows %s", shard, len(dropped), len(rows), dict(by_reason))
    return {
        "rows": len(kept),
        "bytes": size,
        "sha256": digest,
        "hours": float(kept["token_count"].sum()) * SECONDS_PER_TOKEN / 3600,
        "dropped_by_reason": dict(sorted(by_reason.items())),
        "dropped": [r.as_dict() for r in dropped],
        "languages": dict(sorted(Counter(kept["language"]).items())),
        "espeak_ng": espeak_version(),
    }


def features():
    """The part's columns as ``datasets`` features."""
    from datasets import Features, List, Value

    return Features(
        {
            "segment_id": Value("string"),
            "text": Value("string"),
            "phones": Value("string"),
            "codes": List(Value("int32")),
            "duration": Value("float64"),
            "language": Value("string"),
        }
    )


# What a NeuTTS trainer runs on this dataset: finetune.py's preprocess_sample with the stored phones in place of
# g2p.phonemize, the rows already filtered. Shown in the card verbatim (and executed by the tests).
READER = '''\
from functools import partial

import torch
from datasets import load_dataset


def preprocess_sample(sample, tokenizer, max_len):
    """examples/finetune.py's preprocess_sample, with the stored phones instead of g2p.phonemize([text])."""
    speech_gen_start = tokenizer.convert_tokens_to_ids("<|SPEECH_GENERATION_START|>")
    ignore_index = -100
    codes_str = "".join([f"<|speech_{i}|>" for i in sample["codes"]])
    chat = f"""user: Convert the text to speech:<|TEXT_PROMPT_START|>{sample["phones"]}<|TEXT_PROMPT_END|>\\nassistant:<|SPEECH_GENERATION_START|>{codes_str}<|SPEECH_GENERATION_END|>"""
    ids = tokenizer.encode(chat)
    if len(ids) < max_len:
        ids = ids + [tokenizer.pad_token_id] * (max_len - len(ids))
    else:
        ids = ids[:max_len]
    input_ids = torch.tensor(ids, dtype=torch.long)
    labels = torch.full_like(input_ids, ignore_index)
    speech_gen_start_idx = (input_ids == speech_gen_start).nonzero(as_tuple=True)[0]
    if len(speech_gen_start_idx) > 0:
        speech_gen_start_idx = speech_gen_start_idx[0]
        labels[speech_gen_start_idx:] = input_ids[speech_gen_start_idx:]
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def neutts_train_dataset(path, tokenizer, max_len=2048, split="train"):
    """This dataset (its directory or Hub id) as finetune.py's train_dataset: no filter (the rows passed it)."""
    dataset = load_dataset(path, split=split)
    return dataset.map(
        partial(preprocess_sample, tokenizer=tokenizer, max_len=max_len), remove_columns=dataset.column_names
    )
'''


# The card's fixed text: the columns, why rows are left out, how the phonemes are made, how a trainer reads it
# ({reader}: READER)
CARD_COLUMNS = """\
| column | |
|---|---|
| `segment_id` | the corpus's segment id |
| `text` | the transcript, stripped of leading and trailing whitespace |
| `phones` | espeak-ng phonemes of `text` (below) |
| `codes` | 50 Hz neucodec FSQ codes (0-65535): the speech |
| `duration` | seconds |
| `language` | the espeak-ng voice that made `phones` |"""
CARD_LEFT_OUT = """\
## Rows left out

Under the first check a row fails: empty text; a digit; an acronym (`(?:[a-zA-Z]\\.){2,}` or two capitals in
a row); a last character not in `.,?!`; `£` or `$` (finetune.py's `data_filter`, in its order); a token of
the prompt's kind (`<|...|>`) in the text; longer than the configured maximum; a language without an
espeak-ng voice; phonemes of punctuation only. Each is listed per shard in the shard reports."""
CARD_PHONEMES_AND_TRAINING = """\
## Phonemes

`phonemizer.backend.EspeakBackend(language=<voice>, preserve_punctuation=True, with_stress=True,
words_mismatch="ignore", language_switch="remove-flags")`, then `" ".join(phones.split())`: finetune.py's
phonemization, with the voice of each row's language (English of any region: `en-us`, as upstream). The
espeak-ng and phonemizer versions are in each part's parquet metadata (`neutts`). The released NeuTTS
checkpoints were trained on `en-us` phonemes: an English fine-tune keeps the rows with `language == "en-us"`.

## Training with it

In `examples/finetune.py`, build the train dataset with `neutts_train_dataset` below instead of
`load_dataset(...).filter(data_filter).map(partial_preprocess, ...)`; the stored `phones` replace the
on-the-fly phonemization, so no espeak-ng is needed to train:

```python
{reader}


# tokenizer = AutoTokenizer.from_pretrained(config.restore_from); this dataset's directory or Hub id:
train_dataset = neutts_train_dataset("path/to/neutts", tokenizer, max_len=config.max_seq_len)
```
"""


def _card_data(splits: dict[str, dict[str, Any]]) -> Any:
    """The card's YAML header (``huggingface_hub.DatasetCardData``): ``configs`` globbing each split's parts and
    ``dataset_info`` (features, splits), for the splits with rows (``load_dataset`` fails on a split without)."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    loadable = {n: s for n, s in splits.items() if s.get("rows")}
    files = [{"split": n, "path": f"data/{n}/**/*.parquet"} for n in loadable]
    configs: dict[str, Any] = {"configs": [{"config_name": "default", "data_files": files}]} if loadable else {}
    card = DatasetCardData(tags=["audio", "neucodec", "tts", "neutts"], **configs)
    if loadable:
        split_dict = SplitDict(
            {
                n: SplitInfo(name=n, num_bytes=int(s.get("bytes", 0)), num_examples=int(s["rows"]))
                for n, s in loadable.items()
            }
        )
        DatasetInfosDict({"default": DatasetInfo(features=features(), splits=split_dict)}).to_dataset_card_data(card)
    return card


def _card_rows(splits: dict[str, dict[str, Any]]) -> list[str]:
    """Rows and hours per split, and rows per espeak-ng voice."""
    lines = ["| split | rows | hours |", "|---|---|---|"]
    lines += [f"| {n} | {int(s.get('rows', 0))} | {float(s.get('hours', 0.0)):.3f} |" for n, s in splits.items()]
    if not any(s.get("rows") for s in splits.values()):
        lines += ["", "No row has passed the filters yet: there is nothing to load."]
    voices: Counter[str] = Counter()
    for s in splits.values():
        voices.update(s.get("languages", {}))
    if voices:
        lines += ["", "Rows per espeak-ng voice: " + ", ".join(f"{v} {n}" for v, n in sorted(voices.items()))]
    return lines


def card_text(
    splits: dict[str, dict[str, Any]],
    n_shards: int,
    dropped_by_reason: dict[str, int],
    codecs: list[dict[str, Any]] | None = None,
) -> str:
    """README.md of the neutts dataset: ``dataset_info`` (features, splits) and ``configs`` whose data files are the
    glob ``data/{split}/**/*.parquet`` (a new shard's part needs no other change), then how a NeuTTS trainer reads it.
    ``splits``: split -> the shards' part summaries added up (rows, bytes, hours, languages). A split without rows is
    left out of ``configs``: ``load_dataset`` fails on a split with no data. ``codecs``: what made the tokens
    (``stats.codecs_of``), shown at the end, with a warning on top when random test weights did."""
    random = any(c.get("random_weights") for c in codecs or [])
    lines = [
        "---",
        _card_data(splits).to_yaml(),
        "---",
        "",
        "# neucodec tokens for NeuTTS",
        "",
        *(
            ["> **WARNING: encoded with RANDOM test weights: these are not real neucodec tokens.**", ""]
            if random
            else []
        ),
        f"The segments of {n_shards} shards that pass NeuTTS's own filters (neuphonic/neutts-air",
        "`examples/finetune.py`), one row each, with the phonemes its trainer would compute. Each shard's rows are",
        "its own file, `data/{split}/{shard}.parquet`.",
        "",
        CARD_COLUMNS,
        "",
        *_card_rows(splits),
        "",
        CARD_LEFT_OUT,
        "",
        f"Left out: {dict(sorted(dropped_by_reason.items())) or 'none'}",
        "",
        CARD_PHONEMES_AND_TRAINING.format(reader=READER.rstrip("\n")),
    ]
    if codecs:
        lines += ["Codec provenance (the codecs that made the tokens, with their shards):", "", *codec_lines(codecs)]
        lines += ["", "```json", json.dumps(codecs, indent=2), "```", ""]
    return "\n".join(lines)
