"""Encode one shard: ``audio.tar`` + ``metadata.parquet`` -> ``neucodec_tokens.parquet`` + a report.

Accounting rule: every FLAC member of the tar and every metadata id absent from the tar is one
segment, and each ends either encoded or rejected with a reason, so that
``encoded + rejected == segments`` holds for every shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from neucodec_workflow.audio import (
    SAMPLE_RATE,
    Clip,
    Reason,
    Reject,
    decode_member,
    iter_flac_members,
    ordered_map,
    segment_id_of,
)
from neucodec_workflow.encode import Encoder
from neucodec_workflow.tokens_io import NoRowsError, atomic_path, read_provenance, tokens_of, write_tokens

log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """The shard as a whole cannot be encoded (unreadable input, nothing valid in it)."""

    def __init__(self, shard: str, message: str):
        super().__init__(f"shard {shard}: {message}")
        self.shard = shard


@dataclass
class ShardReport:
    shard: str
    segments_in_metadata: int = 0
    segments_in_tar: int = 0
    encoded: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    audio_seconds: float = 0.0
    tokens: int = 0
    wall_seconds: float = 0.0
    resampled: int = 0
    downmixed: int = 0
    codec: dict[str, Any] = field(default_factory=dict)
    encoder: str = ""
    audit: dict[str, Any] | None = None

    @property
    def segments(self) -> int:
        return self.encoded + len(self.rejected)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        d["segments"] = self.segments
        d["rejected_count"] = len(self.rejected)
        d["rejects_by_reason"] = dict(Counter(r["reason"] for r in self.rejected))
        d["audio_seconds_per_wall_second"] = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        d["rejected"] = self.rejected
        return d


def read_metadata_ids(shard: str, metadata: str | Path | BinaryIO, id_column: str) -> pd.Series:
    try:
        df = pd.read_parquet(metadata, columns=[id_column])
    except Exception as exc:
        raise ShardError(shard, f"cannot read metadata.parquet column {id_column!r}: {type(exc).__name__}: {exc}") from exc
    return df[id_column].astype("string")


@contextmanager
def _open_tar(shard: str, tar: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if hasattr(tar, "read"):
        yield tar  # type: ignore[misc]
        return
    try:
        f = open(tar, "rb")
    except OSError as exc:
        raise ShardError(shard, f"cannot open audio.tar: {exc}") from exc
    with f:
        yield f


def audit_pick(segment_id: str, wanted: int, total: int) -> bool:
    """Deterministic sample of about ``wanted`` of ``total`` segments, by a hash of the id."""
    if wanted <= 0 or total <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(segment_id.encode()).digest()[:8], "big") / 2**64
    return h < wanted / total


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

    def as_dict(self) -> dict[str, Any]:
        agreement = self.matching_tokens / self.tokens if self.tokens else None
        return {**self.__dict__, "mismatched": self.mismatched[:20], "token_agreement": agreement}


def encode_shard(
    shard: str,
    tar: str | Path | BinaryIO,
    metadata: str | Path | BinaryIO,
    tokens_path: str | Path,
    encoder: Encoder,
    provenance: dict[str, Any],
    *,
    id_column: str = "segment_id",
    max_seconds: float = 120.0,
    decode_workers: int = 1,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    audit_segments: int = 0,
) -> ShardReport:
    """Encode every valid segment of one shard; stream the tokens parquet (published atomically).

    With ``reference`` and ``audit_segments > 0``, a deterministic sample of segments is also
    encoded with the reference path and the agreement goes into the report.
    """
    start = time.perf_counter()
    report = ShardReport(shard=shard, codec=provenance, encoder=encoder.name)
    ids = read_metadata_ids(shard, metadata, id_column)
    report.segments_in_metadata = int(ids.nunique())
    counts = ids.value_counts()
    duplicated_meta = set(counts[counts > 1].index)
    known = set(ids)
    seen: set[str] = set()
    rejects: list[Reject] = []
    audit = Audit()

    def members() -> Iterator[tuple[str, str, bytes]]:
        """Stream the tar (this thread) and settle id-level outcomes; yield what needs decoding."""
        with _open_tar(shard, tar) as f:
            try:
                for member, data in iter_flac_members(f):
                    report.segments_in_tar += 1
                    seg = segment_id_of(member)
                    if seg in seen:
                        rejects.append(Reject(seg, Reason.DUPLICATE_IN_TAR, "a member with this id came earlier", member))
                        continue
                    seen.add(seg)
                    if seg not in known:
                        rejects.append(Reject(seg, Reason.NOT_IN_METADATA, "", member))
                    elif seg in duplicated_meta:
                        rejects.append(Reject(seg, Reason.DUPLICATE_IN_METADATA, f"{counts[seg]} metadata rows", member))
                    else:
                        yield seg, member, data
            except Exception as exc:  # tarfile.ReadError, truncated streams, network errors
                raise ShardError(shard, f"cannot read audio.tar after {report.segments_in_tar} members: {type(exc).__name__}: {exc}") from exc

    def clips() -> Iterator[Clip]:
        decode = lambda item: decode_member(item[0], item[1], item[2], max_seconds)  # noqa: E731
        for result in ordered_map(decode, members(), decode_workers, ahead=4 * decode_workers):
            if isinstance(result, Reject):
                rejects.append(result)
            else:
                yield result

    def rows() -> Iterator[tuple[str, np.ndarray]]:
        for clip, tokens in encoder.encode(clips()):
            if isinstance(tokens, Exception):
                rejects.append(Reject(clip.segment_id, Reason.ENCODE_ERROR, f"{type(tokens).__name__}: {tokens}", clip.member))
                continue
            if reference is not None and audit.segments < audit_segments and audit_pick(clip.segment_id, audit_segments, len(known)):
                audit.add(clip.segment_id, tokens, reference(clip.audio))
            report.encoded += 1
            report.audio_seconds += len(clip.audio) / SAMPLE_RATE
            report.tokens += len(tokens)
            report.resampled += clip.source_rate != SAMPLE_RATE
            report.downmixed += clip.source_channels > 1
            yield clip.segment_id, tokens

    try:
        write_tokens(tokens_path, rows(), provenance)
        nothing = False
    except NoRowsError:
        nothing = True
    for seg in sorted(known - seen):
        rejects.append(Reject(seg, Reason.MISSING_FROM_TAR, "id in metadata.parquet, no FLAC member in audio.tar"))
    report.rejected = [r.as_dict() for r in rejects]
    for r in rejects:
        log.warning("shard %s: segment %s rejected: %s %s", shard, r.segment_id, r.reason, r.detail)
    if nothing:
        summary = dict(Counter(r.reason for r in rejects)) or "no FLAC members and no metadata rows"
        raise ShardError(shard, f"no segment could be encoded ({summary})")
    if reference is not None and audit_segments > 0:
        report.audit = audit.as_dict()
        log.info("shard %s: audit of %d segments: token agreement %s", shard, audit.segments, report.audit["token_agreement"])
    report.wall_seconds = time.perf_counter() - start
    return report


def audit_stored(shard: str, tar: str | Path | BinaryIO, tokens_path: str | Path, reference: Callable[[np.ndarray], np.ndarray],
                 segments: int, max_seconds: float = 120.0) -> dict[str, Any]:
    """Re-encode a deterministic sample of a shard's stored segments with the reference path and
    compare with the tokens on disk: the audit users run on their own weights and data."""
    stored = pd.read_parquet(tokens_path)
    tokens = dict(zip(stored["segment_id"], stored["neucodec_tokens"], strict=True))
    audit = Audit()
    with _open_tar(shard, tar) as f:
        for member, data in iter_flac_members(f):
            seg = segment_id_of(member)
            if audit.segments >= segments:
                break
            if seg in tokens and audit_pick(seg, segments, len(tokens)):
                clip = decode_member(seg, member, data, max_seconds)
                if isinstance(clip, Clip):
                    audit.add(seg, tokens_of(tokens.pop(seg)), reference(clip.audio))
    return {"shard": shard, "stored": str(Path(tokens_path).name), "provenance": read_provenance(tokens_path), **audit.as_dict()}


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_report(path: str | Path, report: ShardReport) -> None:
    write_json(path, report.as_dict())
