"""The rows of the ``multilingual_tts`` format (``mtts.py``), built from one shard's rows of one split.

A TTS row is ``<|im_start|>{speaker}: {text}<|speech_start|><|s_…|>…<|im_end|>``, a voice-cloning row two utterances
``<|im_start|>{text}<|speech_start|><|s_…|>…<|im_end|>`` of one speaker (reference, then target;
``mtts_pairs.py``), as upstream renders them (``render_tts``, ``render_vc``). Only the text parts are tokenized; a
speech code ``c`` is the id ``speech_base + c``. One id buffer holds the TTS rows one after the other and each
paired segment's utterance once; a row is a list of spans of it (a voice-cloning row: two utterances), so a shard's
many voice-cloning rows are never copied before the file is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from neucodec_workflow.dataset.mtts_pairs import choose_pairs
from neucodec_workflow.dataset.mtts_tokenizer import (
    IM_END,
    IM_START,
    SPEECH_START,
    SPEECH_TOKENS,
    MttsError,
    SpeechTokenizer,
)
from neucodec_workflow.record.records import Reason, Reject

UNKNOWN = "unknown"  # a null dataset or speaker in a speaker name

Dropped = list[tuple[int, Reject]]  # segments left out: (position in the shard, why)


@dataclass(frozen=True)
class MttsSettings:
    """How a shard's rows become training rows: the ``sft.multilingual_tts`` config (``from_config``: its defaults
    are the config schema's, their only owner) and the format's own limits on texts."""

    block_tokens: int
    speaker_format: str  # {dataset}, {speaker} and {language}; a null one renders as "unknown"
    pairs_per_speaker: int  # voice-cloning rows per speaker and shard; 0: none
    max_seconds: float
    seed: int
    min_text_chars: int = 2
    min_ref_chars: int = 5  # both texts of a voice-cloning pair

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.pairs_per_speaker < 0:
            raise ValueError(f"block_tokens must be >= 1 and pairs_per_speaker >= 0: {self}")
        try:
            self.speaker_format.format(dataset="d", speaker="s", language="l")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"speaker_format {self.speaker_format!r}: only {{dataset}}, {{speaker}}, {{language}}: {exc}"
            ) from exc

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> MttsSettings:
        """The settings of a validated ``sft.multilingual_tts`` config section (Snakemake's ``validate`` fills in the
        schema's defaults)."""
        return cls(
            block_tokens=int(section["block_tokens"]),
            speaker_format=str(section["speaker_format"]),
            pairs_per_speaker=int(section["pairs_per_speaker"]),
            max_seconds=float(section["max_seconds"]),
            seed=int(section["seed"]),
        )


def render_tts(speaker: str, text: str, codes: np.ndarray) -> str:
    """A TTS row as the upstream packer renders it (``text`` as given: strip it first)."""
    return f"{IM_START}{speaker}: {text}{SPEECH_START}{''.join(f'<|s_{c}|>' for c in codes.tolist())}{IM_END}"


def render_vc(ref_text: str, ref_codes: np.ndarray, text: str, codes: np.ndarray) -> str:
    """A voice-cloning row as the upstream notebook renders it."""
    ref = "".join(f"<|s_{c}|>" for c in ref_codes.tolist())
    target = "".join(f"<|s_{c}|>" for c in codes.tolist())
    return f"{IM_START}{ref_text}{SPEECH_START}{ref}{IM_END}{IM_START}{text}{SPEECH_START}{target}{IM_END}"


@dataclass
class Rows:
    """Training rows as spans of one id buffer: row ``r`` is ``source[src[k] : src[k] + length[k]]`` for the spans
    ``k`` in ``row_spans[r] : row_spans[r + 1]``, one after the other. ``ref`` and ``target`` are the input rows
    (positions in the shard's DataFrame) a row was made of; ``ref`` is -1 for a TTS row."""

    source: np.ndarray  # uint32
    src: np.ndarray  # int64, per span
    length: np.ndarray  # int64, per span
    row_spans: np.ndarray  # int64, rows + 1
    lengths: np.ndarray  # int64 tokens per row
    speech: np.ndarray  # int64 speech tokens per row
    ref: np.ndarray  # int64
    target: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self, lo: int, hi: int) -> np.ndarray:
        """The ids of rows ``lo:hi``, one after the other."""
        k0, k1 = int(self.row_spans[lo]), int(self.row_spans[hi])
        src, length = self.src[k0:k1], self.length[k0:k1]
        out_start = np.cumsum(length) - length
        index = np.repeat(src - out_start, length) + np.arange(int(length.sum()), dtype=np.int64)
        return self.source[index]


@dataclass
class Built:
    """``build_rows``: the rows in order (TTS, then voice cloning), the segments left out, the pair counts."""

    rows: Rows
    rejects: list[Reject] = field(default_factory=list)
    tts: int = 0
    voice_cloning: int = 0
    pairs: dict[str, int] = field(default_factory=dict)


def _field(rows: pd.DataFrame, name: str) -> list[str | None]:
    """A speaker-name field as strings, null and empty as None."""
    if name not in rows:
        return [None] * len(rows)
    return [v if isinstance(v, str) and v else None for v in rows[name].astype("string").tolist()]


def speaker_names(rows: pd.DataFrame, speaker_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's speaker name (``speaker_format``; a null field renders as ``unknown``) and whether it has a
    speaker (rows without one make no voice-cloning pairs)."""
    speaker = _field(rows, "speaker")
    names: dict[tuple[str | None, ...], str] = {}
    out = np.empty(len(rows), dtype=np.object_)
    for i, key in enumerate(zip(_field(rows, "dataset"), speaker, _field(rows, "language"), strict=True)):
        name = names.get(key)
        if name is None:
            d, s, lang = (v if v is not None else UNKNOWN for v in key)
            name = names[key] = speaker_format.format(dataset=d, speaker=s, language=lang)
        out[i] = name
    return out, np.array([s is not None for s in speaker], dtype=bool)


@dataclass
class _Segments:
    """A shard's rows as ``build_rows`` reads them: ids, stripped texts with their characters and words (counted only
    where they could outnumber the tokens), speech codes with their counts, the stored token counts, durations."""

    ids: list[str]
    texts: list[str]
    chars: np.ndarray
    words: np.ndarray
    codes: list[np.ndarray]
    n_codes: np.ndarray
    token_count: np.ndarray
    duration: np.ndarray


def _segments(shard: str, rows: pd.DataFrame) -> _Segments:
    n = len(rows)
    texts = [str(t).strip() for t in rows["text"].tolist()]
    chars = np.fromiter(map(len, texts), np.int64, n)
    codes = [np.asarray(c) for c in rows["neucodec_tokens"].tolist()]
    for c in codes:
        if c.dtype != np.uint16 and len(c) and (int(c.min()) < 0 or int(c.max()) >= SPEECH_TOKENS):
            raise MttsError(f"shard {shard}: speech codes outside 0..{SPEECH_TOKENS - 1}")
    token_count = rows["token_count"].to_numpy(np.int64) if n else np.zeros(0, np.int64)
    words = (chars + 1) // 2  # a text has at most (chars + 1) // 2 words
    for i in np.flatnonzero(words > token_count).tolist():
        words[i] = len(texts[i].split())
    return _Segments(
        ids=rows["segment_id"].astype(str).tolist(),
        texts=texts,
        chars=chars,
        words=words,
        codes=codes,
        n_codes=np.fromiter(map(len, codes), np.int64, n),
        token_count=token_count,
        duration=rows["duration"].to_numpy(np.float64) if n else np.zeros(0, np.float64),
    )


def _checked(seg: _Segments, settings: MttsSettings, dropped: Dropped) -> np.ndarray:
    """The segments (positions) whose text is long enough, has no more words than speech tokens and whose duration
    is within ``max_seconds``; the others go to ``dropped`` under the first check they fail."""
    short = seg.chars < settings.min_text_chars
    wordy = ~short & (seg.words > seg.token_count)
    long = ~short & ~wordy & (seg.duration > settings.max_seconds)
    reasons = {
        Reason.TEXT_TOO_SHORT: (short, lambda i: f"{seg.chars[i]} characters < {settings.min_text_chars}"),
        Reason.MORE_WORDS_THAN_TOKENS: (wordy, lambda i: f"{seg.words[i]} words > {seg.token_count[i]} speech tokens"),
        Reason.TOO_LONG: (long, lambda i: f"{seg.duration[i]:.2f} s > {settings.max_seconds} s"),
    }
    for reason, (mask, detail) in reasons.items():
        dropped += [(i, Reject(seg.ids[i], reason, detail(i))) for i in np.flatnonzero(mask).tolist()]
    return np.flatnonzero(~(short | wordy | long))


class _Heads(NamedTuple):
    """Tokenized heads ``<|im_start|>{text}<|speech_start|>``: head ``k`` is ``ids[start[k] : start[k] + length[k]]``."""

    ids: np.ndarray
    start: np.ndarray
    length: np.ndarray


class _Utterances(NamedTuple):
    """Utterances ``{head}{speech}<|im_end|>`` of the ``segments`` (positions), one per segment, with their lengths."""

    segments: np.ndarray
    heads: _Heads
    lengths: np.ndarray


def _tts_utterances(
    seg: _Segments, ok: np.ndarray, names: np.ndarray, tokenizer: SpeechTokenizer, block: int, dropped: Dropped
) -> _Utterances:
    """The TTS rows ``<|im_start|>{speaker}: {text}<|speech_start|>{speech}<|im_end|>`` of the segments ``ok``. A text
    or speaker name the tokenizer reads as its own tokens (``<|im_end|>``, ``<|s_12|>``, ...: a corrupt row), or a
    row longer than a block, goes to ``dropped``."""
    ids, length = tokenizer.heads([f"{names[i]}: {seg.texts[i]}" for i in ok.tolist()])
    start = np.cumsum(length) - length
    special = tokenizer.added_inside(ids, start, length)
    for k in np.flatnonzero(special >= 0).tolist():
        i, token = int(ok[k]), tokenizer.token(int(special[k]))
        where = "the text" if token in seg.texts[i] else f"the speaker name {names[i]!r}"
        dropped.append((i, Reject(seg.ids[i], Reason.TEXT_HAS_SPECIAL_TOKENS, f"{where} holds the token {token}")))
    tts_len = length + seg.n_codes[ok] + 1
    fits = tts_len <= block
    dropped += [
        (int(i), Reject(seg.ids[i], Reason.LONGER_THAN_BLOCK, f"{tts_len[k]} tokens > block {block}"))
        for k, i in enumerate(ok.tolist())
        if not fits[k] and special[k] < 0
    ]
    fits &= special < 0
    return _Utterances(ok[fits], _Heads(ids, start[fits], length[fits]), tts_len[fits])


def _vc_utterances(
    shard: str,
    seg: _Segments,
    ref: np.ndarray,
    target: np.ndarray,
    tokenizer: SpeechTokenizer,
    block: int,
    dropped: Dropped,
) -> tuple[_Utterances, np.ndarray, np.ndarray]:
    """The utterances ``<|im_start|>{text}<|speech_start|>{speech}<|im_end|>`` of the paired segments, and the pairs
    (refs, targets) whose voice-cloning row fits in a block; a pair whose row does not goes to ``dropped``."""
    in_pairs = np.unique(np.concatenate([ref, target]))
    ids, length = tokenizer.heads([seg.texts[i] for i in in_pairs.tolist()])
    start = np.cumsum(length) - length
    if (tokenizer.added_inside(ids, start, length) >= 0).any():
        # cannot happen: each paired text passed the check inside its TTS row ("{speaker}: {text}")
        raise MttsError(f"shard {shard}: a voice-cloning text holds one of the tokenizer's own tokens")
    utterance_len = np.zeros(len(seg.ids), np.int64)
    utterance_len[in_pairs] = length + seg.n_codes[in_pairs] + 1
    vc_len = utterance_len[ref] + utterance_len[target]
    fits = vc_len <= block
    for k in np.flatnonzero(~fits).tolist():
        a, b = int(ref[k]), int(target[k])
        why = f"voice-cloning row {seg.ids[a]} -> {seg.ids[b]}: {vc_len[k]} tokens > block {block}"
        dropped.append((b, Reject(seg.ids[b], Reason.LONGER_THAN_BLOCK, why)))
    return _Utterances(in_pairs, _Heads(ids, start, length), utterance_len[in_pairs]), ref[fits], target[fits]


def _fill(out: np.ndarray, utterances: _Utterances, codes: list[np.ndarray], base: int, im_end: int) -> np.ndarray:
    """Fill ``out`` with each utterance (head, speech ids, ``<|im_end|>``), one after the other; returns their starts
    in ``out``."""
    heads, row_len = utterances.heads, utterances.lengths
    row_start = np.cumsum(row_len) - row_len
    for o, i in zip((row_start + heads.length).tolist(), utterances.segments.tolist(), strict=True):
        out[o : o + len(codes[i])] = codes[i]
    out += np.uint32(base)  # the speech codes become ids; heads and ends are written over below
    head_len = heads.length
    within = np.arange(int(head_len.sum()), dtype=np.int64) - np.repeat(np.cumsum(head_len) - head_len, head_len)
    out[np.repeat(row_start, head_len) + within] = heads.ids[np.repeat(heads.start, head_len) + within]
    out[row_start + row_len - 1] = im_end
    return row_start


def _rows(
    seg: _Segments, tts: _Utterances, vc: _Utterances, ref: np.ndarray, target: np.ndarray, tokenizer: SpeechTokenizer
) -> Rows:
    """One id buffer: the TTS rows one after the other, then the utterances of the voice-cloning rows; the TTS rows,
    then the voice-cloning rows (``ref``, ``target``) as spans of it."""
    n_tts = int(tts.lengths.sum())
    source = np.empty(n_tts + int(vc.lengths.sum()), np.uint32)
    base, im_end = tokenizer.speech_base, tokenizer.im_end
    tts_start = _fill(source[:n_tts], tts, seg.codes, base, im_end)
    utterance_start = np.zeros(len(seg.ids), np.int64)
    utterance_start[vc.segments] = n_tts + _fill(source[n_tts:], vc, seg.codes, base, im_end)
    utterance_len = np.zeros(len(seg.ids), np.int64)
    utterance_len[vc.segments] = vc.lengths
    n = len(tts.segments)
    return Rows(
        source=source,
        src=np.concatenate([tts_start, np.stack([utterance_start[ref], utterance_start[target]], 1).ravel()]),
        length=np.concatenate([tts.lengths, np.stack([utterance_len[ref], utterance_len[target]], 1).ravel()]),
        row_spans=np.concatenate([np.arange(n), n + np.arange(0, 2 * len(ref) + 1, 2)]),
        lengths=np.concatenate([tts.lengths, utterance_len[ref] + utterance_len[target]]).astype(np.int64),
        speech=np.concatenate([seg.n_codes[tts.segments], seg.n_codes[ref] + seg.n_codes[target]]).astype(np.int64),
        ref=np.concatenate([np.full(n, -1, np.int64), ref]),
        target=np.concatenate([tts.segments, target]).astype(np.int64),
    )


def build_rows(shard: str, rows: pd.DataFrame, tokenizer: SpeechTokenizer, settings: MttsSettings) -> Built:
    """The shard's TTS rows (in shard order) and voice-cloning rows (speaker by speaker, in order of first
    appearance), as spans; every segment or pair left out is a ``Reject`` with its reason (a text or speaker name
    the tokenizer reads as its own tokens: ``text_has_special_tokens``, found on the tokenized row)."""
    seg = _segments(shard, rows)
    dropped: Dropped = []
    ok = _checked(seg, settings, dropped)
    names, has_speaker = speaker_names(rows, settings.speaker_format)
    tts = _tts_utterances(seg, ok, names, tokenizer, settings.block_tokens, dropped)
    # voice-cloning pairs among the written rows with a speaker and a long enough text
    kept = tts.segments
    eligible = kept[has_speaker[kept] & (seg.chars[kept] >= settings.min_ref_chars)]
    if not settings.pairs_per_speaker:
        eligible = kept[:0]
    ref, target, pairs = choose_pairs(shard, eligible, names, seg.texts, settings.pairs_per_speaker, settings.seed)
    vc, ref, target = _vc_utterances(shard, seg, ref, target, tokenizer, settings.block_tokens, dropped)
    dropped.sort(key=lambda d: d[0])
    return Built(
        rows=_rows(seg, tts, vc, ref, target, tokenizer),
        rejects=[r for _, r in dropped],
        tts=len(kept),
        voice_cloning=len(ref),
        pairs=pairs,
    )
