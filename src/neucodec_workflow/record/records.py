"""Typed records: a clip and the encoder protocol (what passes between a shard's job and the engine), why a segment
was rejected, the per-shard report, the audit, the corpus stats, the encode mode. No torch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, TypedDict

import numpy as np

from neucodec_workflow.record.contract import HOP, SAMPLE_RATE


@dataclass
class Clip:
    segment_id: str
    member: str
    audio: np.ndarray  # float32 mono 16 kHz
    source_rate: int
    source_channels: int

    @property
    def n_tokens(self) -> int:
        return len(self.audio) // HOP

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class Encoder(Protocol):
    # read-only members: an attribute or a property satisfies them
    @property
    def name(self) -> str: ...

    @property
    def provenance(self) -> dict[str, Any]:
        """Goes into the tokens file: codec, weights, mode, precision, kernels."""
        ...

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        """Yield each clip with its uint16 tokens, or with the exception that stopped it."""
        ...


Mode = Literal["exact", "fast"]
MODES: tuple[Mode, ...] = ("exact", "fast")


class Reason(StrEnum):
    """Why a segment has no tokens (encode job) or no dataset row (SFT): the strings users see in reports and stats."""

    # encode job: one per tar member or metadata id
    DECODE_ERROR = "decode_error"
    EMPTY = "empty_audio"
    TOO_SHORT = "shorter_than_one_frame"
    NON_FINITE = "non_finite_samples"
    TOO_LONG = "longer_than_max_seconds"
    NOT_IN_METADATA = "not_in_metadata"
    MISSING_FROM_TAR = "missing_from_tar"
    DUPLICATE_IN_TAR = "duplicate_in_tar"
    DUPLICATE_IN_METADATA = "duplicate_in_metadata"
    MISSING_SEGMENT_ID = "missing_segment_id"  # a metadata row whose segment_id is null or empty (one per row)
    ENCODE_ERROR = "encode_error"
    # a token file made by another tool: a metadata id it has no row for (why is not known)
    NO_TOKENS = "no_tokens_in_foreign_file"
    # SFT dataset: encoded segments that cannot become a training row
    NO_TEXT = "no_text"
    BAD_DURATION = "unparseable_duration"
    DUPLICATE_IN_TOKENS = "duplicate_in_tokens"
    TOKEN_COUNT_MISMATCH = "token_count_mismatch"
    # NeuTTS format: rows that NeuTTS's own filters (examples/finetune.py) or espeak-ng leave out
    NEUTTS_EMPTY_TEXT = "neutts_empty_text"
    NEUTTS_DIGIT = "neutts_digit"
    NEUTTS_ACRONYM = "neutts_acronym"
    NEUTTS_NO_FINAL_PUNCTUATION = "neutts_no_final_punctuation"
    NEUTTS_CURRENCY = "neutts_currency_symbol"
    NEUTTS_TOO_LONG = "neutts_longer_than_max_seconds"
    NEUTTS_NO_VOICE = "neutts_no_espeak_voice"
    NEUTTS_EMPTY_PHONEMES = "neutts_empty_phonemes"
    # Multilingual-TTS format: segments (or voice-cloning rows) that cannot be a training row; a segment longer than
    # max_seconds is TOO_LONG (longer_than_max_seconds), as in the encode job
    TEXT_TOO_SHORT = "text_too_short"
    MORE_WORDS_THAN_TOKENS = "more_words_than_tokens"
    LONGER_THAN_BLOCK = "longer_than_block"
    # formats that tokenize the text or embed it in a prompt (multilingual_tts, neutts): a text (or speaker name)
    # holding the tokenizer's own tokens (<|im_end|>, <|speech_start|>, <|s_12|>, ...) would be read as those tokens
    TEXT_HAS_SPECIAL_TOKENS = "text_has_special_tokens"


@dataclass(frozen=True)
class Reject:
    segment_id: str
    reason: Reason
    detail: str = ""
    member: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"segment_id": self.segment_id, "reason": str(self.reason), "detail": self.detail, "member": self.member}


@dataclass
class Audit:
    """Token agreement of the engine with the reference path on a sample of segments."""

    segments: int = 0
    identical_segments: int = 0
    tokens: int = 0
    matching_tokens: int = 0
    mismatched: list[str] = field(default_factory=list)

    def add(self, segment_id: str, tokens: np.ndarray, reference: np.ndarray) -> None:
        n = max(len(tokens), len(reference))
        same = int((tokens[: len(reference)] == reference[: len(tokens)]).sum())
        self.segments += 1
        self.tokens += n
        self.matching_tokens += same
        if same == n:
            self.identical_segments += 1
        else:
            self.mismatched.append(segment_id)

    @property
    def token_agreement(self) -> float | None:
        return self.matching_tokens / self.tokens if self.tokens else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatched": self.mismatched[:20], "token_agreement": self.token_agreement}


@dataclass
class ShardReport:
    """What one encode job did: every segment encoded or rejected with a reason, speed, provenance, inline audit."""

    shard: str
    segments_in_metadata: int = 0
    segments_in_tar: int = 0
    encoded: int = 0
    rejected: list[Reject] = field(default_factory=list)
    audio_seconds: float = 0.0
    tokens: int = 0
    wall_seconds: float = 0.0
    resampled: int = 0
    downmixed: int = 0
    codec: dict[str, Any] = field(default_factory=dict)
    encoder: str = ""
    device: str = ""
    # Where and when (UTC, ISO 8601, seconds): the status view's throughput per node and over time, the report's plots.
    # The host is the node's short name (no domain).
    host: str = ""
    started_at: str = ""
    finished_at: str = ""
    audit: Audit | None = None

    @property
    def segments(self) -> int:
        return self.encoded + len(self.rejected)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("rejected", "audit")}
        d["segments"] = self.segments
        d["rejected_count"] = len(self.rejected)
        d["rejects_by_reason"] = dict(Counter(str(r.reason) for r in self.rejected))
        d["audio_seconds_per_wall_second"] = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        d["audit"] = self.audit.as_dict() if self.audit is not None else None
        d["rejected"] = [r.as_dict() for r in self.rejected]
        return d


class AuditTotals(TypedDict):
    shards: int
    segments: int
    tokens: int
    token_agreement: float | None
    shards_below_1: list[str]


class GroupTotals(TypedDict):
    """A language's (or dataset's) rows of the SFT dataset."""

    segments: int
    tokens: int
    dataset_hours: float  # the dataset rows' audio (not all encoded audio: that is ``audio_hours``)


class CorpusStats(TypedDict):
    """``stats.json``."""

    shards: int
    records: dict[str, int]  # token files by kind: workflow, foreign, workflow_without_report
    segments: int
    encoded: int
    rejected: int
    rejects_by_reason: dict[str, int]
    audio_hours: float  # all encoded audio (the encode reports' audio_seconds)
    tokens: int
    token_count_mismatches: int
    encode_wall_seconds: float
    audio_seconds_per_wall_second: float
    random_weights: bool
    audit: AuditTotals
    per_language: dict[str, GroupTotals]
    per_dataset: dict[str, GroupTotals]
    sft_rows_per_split: dict[str, int]
    sft_excluded_by_reason: dict[str, int]
    sft_formats: dict[str, dict[str, dict[str, Any]]]  # format -> split -> totals (rows, drops by reason, ...)
    duration_histogram: dict[str, Any]  # bin_seconds, counts (segments per bin from 0 s), shards_without
    provenance: list[dict[str, Any]]  # shards per (record, codec_id, revision, random_weights, mode)
    failed_shards: list[dict[str, str]]  # not in the dataset (--keep-going): shard, stage (encode, derive), error
