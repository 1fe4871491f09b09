"""Encode one shard: ``audio.tar`` + ``metadata.parquet`` -> ``neucodec_tokens.parquet`` + a report.

Accounting rule: every FLAC member of the tar and every metadata id absent from the tar is one
segment, and each ends either encoded or rejected with a reason, so that
``encoded + rejected == segments`` holds for every shard.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from neucodec_workflow.audio import SAMPLE_RATE, Clip, Reason, Reject, decode_member, iter_flac_members, segment_id_of
from neucodec_workflow.encode import Encoder
from neucodec_workflow.tokens_io import atomic_path, write_tokens

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
) -> ShardReport:
    """Encode every valid segment of one shard; write the tokens parquet atomically; return the report."""
    start = time.perf_counter()
    report = ShardReport(shard=shard, codec=provenance, encoder=encoder.name)
    ids = read_metadata_ids(shard, metadata, id_column)
    report.segments_in_metadata = int(ids.nunique())
    counts = ids.value_counts()
    duplicated_meta = set(counts[counts > 1].index)
    known = set(ids)
    seen: set[str] = set()
    rejects: list[Reject] = []

    def clips() -> Iterator[Clip]:
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
                        result = decode_member(seg, member, data, max_seconds)
                        if isinstance(result, Reject):
                            rejects.append(result)
                        else:
                            yield result
            except Exception as exc:  # tarfile.ReadError, truncated streams, network errors
                if isinstance(exc, ShardError):
                    raise
                raise ShardError(shard, f"cannot read audio.tar after {report.segments_in_tar} members: {type(exc).__name__}: {exc}") from exc

    rows: list[tuple[str, np.ndarray]] = []
    for clip, tokens in encoder.encode(clips()):
        if isinstance(tokens, Exception):
            rejects.append(Reject(clip.segment_id, Reason.ENCODE_ERROR, f"{type(tokens).__name__}: {tokens}", clip.member))
            continue
        rows.append((clip.segment_id, tokens))
        report.audio_seconds += len(clip.audio) / SAMPLE_RATE
        report.tokens += len(tokens)
        report.resampled += clip.source_rate != SAMPLE_RATE
        report.downmixed += clip.source_channels > 1
    for seg in sorted(known - seen):
        rejects.append(Reject(seg, Reason.MISSING_FROM_TAR, "id in metadata.parquet, no FLAC member in audio.tar"))

    report.encoded = len(rows)
    report.rejected = [r.as_dict() for r in rejects]
    report.wall_seconds = time.perf_counter() - start
    for r in rejects:
        log.warning("shard %s: segment %s rejected: %s %s", shard, r.segment_id, r.reason, r.detail)
    if not rows:
        summary = dict(Counter(r.reason for r in rejects)) or "no FLAC members and no metadata rows"
        raise ShardError(shard, f"no segment could be encoded ({summary})")
    write_tokens(tokens_path, rows, provenance)
    report.wall_seconds = time.perf_counter() - start
    return report


def write_report(path: str | Path, report: ShardReport) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
