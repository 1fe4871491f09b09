"""Encode one shard: ``audio.tar`` + the metadata's ids -> ``neucodec_tokens.parquet``, its report inside.

Accounting rule: every FLAC member of the tar, every metadata id absent from the tar and every metadata row
without an id (null or empty: ``missing_segment_id``) is one segment, and each ends either encoded or rejected
with a reason, so that ``encoded + rejected == segments`` holds for every shard. A problem with one segment
(undecodable, too long, out of memory alone, codes that are not valid tokens) is that segment's reject; a shard in
which nothing could be encoded still gets its record, a token file with zero rows. Only a shard that cannot be
read (its tar, its metadata or the metadata's id column) fails its job.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from neucodec_workflow.background import ordered_map
from neucodec_workflow.record.contract import SAMPLE_RATE, candidates, pick_column, write_tokens
from neucodec_workflow.record.progress import Progress, Tick
from neucodec_workflow.record.records import Audit, Clip, Encoder, Reason, Reject, ShardReport
from neucodec_workflow.shard.audio import ShardError, decode_member, iter_flac_members, open_tar, segment_id_of
from neucodec_workflow.shard.audit import audit_pick

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_metadata_ids(shard: str, metadata: str | Path | BinaryIO, id_column: str | list[str]) -> pd.Series:
    """The shard's segment ids, from the first of the ``columns.segment_id`` candidates present. The job reads the
    metadata once, before the model loads: a bad file fails fast."""
    try:
        pf = pq.ParquetFile(metadata)
        column = pick_column(id_column, pf.schema_arrow.names)
        if column is None:
            raise KeyError(
                f"no segment id column: none of the columns {candidates(id_column)} (columns: {sorted(pf.schema_arrow.names)}); "
                "set columns.segment_id in the config"
            )
        ids = pf.read(columns=[column]).column(column).to_pandas()
    except Exception as exc:
        raise ShardError(shard, f"cannot read metadata.parquet: {type(exc).__name__}: {exc}") from exc
    return ids.astype("string")


def encode_shard(
    shard: str,
    tar: str | Path | BinaryIO,
    ids: pd.Series,
    tokens_path: str | Path,
    encoder: Encoder,
    *,
    max_seconds: float,
    decode_workers: int,
    reference: Callable[[np.ndarray], np.ndarray | None] | None = None,
    audit_segments: int = 0,
    device: str = "",
) -> ShardReport:
    """Encode every valid segment of one shard; stream the tokens parquet (published atomically) with the encoder's
    provenance and this report in its key-value metadata: the token file is the shard's record.

    ``ids``: the metadata's segment ids, one per metadata row in order (``read_metadata_ids``); a null or empty one
    is that row's reject (``missing_segment_id``, the detail names the row). With ``reference`` and
    ``audit_segments > 0``, a deterministic sample of segments is also encoded with the reference path and the
    agreement goes into the report (``reference`` returns None for a clip it could not encode: that clip is not
    audited). No segment encoded is still a record: a token file with zero rows, every segment rejected.
    """
    start = time.perf_counter()
    report = ShardReport(
        shard=shard,
        codec=encoder.provenance,
        encoder=encoder.name,
        device=device,
        host=platform.node().split(".")[0],
        started_at=utc_now(),
    )
    state = _ShardState(report, ids, reference, audit_segments)
    clips = state.clips(state.members(tar), max_seconds, decode_workers)
    try:
        with Progress(f"shard {shard}", state.tick):
            write_tokens(
                tokens_path, state.rows(clips, encoder), encoder.provenance, report=lambda: state.settle(start)
            )
    finally:
        for r in state.rejects:
            log.warning("shard %s: segment %s rejected: %s %s", shard, r.segment_id, r.reason, r.detail)
    if not report.encoded:
        summary = dict(Counter(str(r.reason) for r in state.rejects)) or "no FLAC members and no metadata rows"
        log.warning("shard %s: no segment could be encoded (%s): its token file has zero rows", shard, summary)
    return report


class _ShardState:
    """One shard while it encodes: the metadata's ids, the members seen so far, the rejects, the audit and the
    report. Its stages are generators, chained by ``encode_shard``: ``members`` (the tar streamed, id-level
    outcomes) -> ``clips`` (decoded on ``decode_workers`` threads) -> ``rows`` (encoded, audited, counted); each
    settles what it can and passes the rest on; ``settle`` adds what is known only at the end."""

    def __init__(
        self,
        report: ShardReport,
        ids: pd.Series,
        reference: Callable[[np.ndarray], np.ndarray | None] | None,
        audit_segments: int,
    ):
        self.report, self.shard = report, report.shard
        self.reference, self.audit_segments = reference, audit_segments
        null = ids.isna().to_numpy(dtype=bool)
        blank = null | ids.fillna("").eq("").to_numpy(dtype=bool)
        self.rejects: list[Reject] = [
            Reject(
                "",
                Reason.MISSING_SEGMENT_ID,
                f"metadata row {row} (0-based): segment_id is {'null' if null[row] else 'empty'}",
            )
            for row in np.flatnonzero(blank)
        ]
        ids = ids[~blank]
        report.segments_in_metadata = int(ids.nunique())
        self.counts = ids.value_counts()
        self.duplicated_meta = set(self.counts[self.counts > 1].index)
        self.known = set(ids)
        self.seen: set[str] = set()
        self.audit = Audit()

    def members(self, tar: str | Path | BinaryIO) -> Iterator[tuple[str, str, bytes]]:
        """Stream the tar (this thread) and settle id-level outcomes; yield what needs decoding."""
        with open_tar(self.shard, tar) as f:
            try:
                for member, data in iter_flac_members(f):
                    self.report.segments_in_tar += 1
                    seg = segment_id_of(member)
                    reject = self._id_reject(seg, member)
                    self.seen.add(seg)
                    if reject is not None:
                        self.rejects.append(reject)
                    else:
                        yield seg, member, data
            except Exception as exc:  # tarfile.ReadError, truncated streams, network errors
                raise ShardError(
                    self.shard,
                    f"cannot read audio.tar after {self.report.segments_in_tar} members: {type(exc).__name__}: {exc}",
                ) from exc

    def _id_reject(self, seg: str, member: str) -> Reject | None:
        """A member's reject for its id alone (seen before, not in the metadata, or more than once there)."""
        if seg in self.seen:
            return Reject(seg, Reason.DUPLICATE_IN_TAR, "a member with this id came earlier", member)
        if seg not in self.known:
            return Reject(seg, Reason.NOT_IN_METADATA, "", member)
        if seg in self.duplicated_meta:
            return Reject(seg, Reason.DUPLICATE_IN_METADATA, f"{self.counts[seg]} metadata rows", member)
        return None

    def clips(
        self, members: Iterator[tuple[str, str, bytes]], max_seconds: float, decode_workers: int
    ) -> Iterator[Clip]:
        """The members decoded on ``decode_workers`` threads, in tar order; the ones that fail a check are rejects."""

        def decode(item: tuple[str, str, bytes]) -> Clip | Reject:
            return decode_member(*item, max_seconds=max_seconds)

        for result in ordered_map(decode, members, decode_workers, ahead=4 * decode_workers):
            if isinstance(result, Reject):
                self.rejects.append(result)
            else:
                yield result

    def rows(self, clips: Iterator[Clip], encoder: Encoder) -> Iterator[tuple[str, np.ndarray]]:
        """The token file's rows; a clip the encoder failed on is a reject, a sampled one is audited."""
        report = self.report
        for clip, tokens in encoder.encode(clips):
            if isinstance(tokens, Exception):
                self.rejects.append(
                    Reject(clip.segment_id, Reason.ENCODE_ERROR, f"{type(tokens).__name__}: {tokens}", clip.member)
                )
                continue
            if (
                self.reference is not None
                and self.audit.segments < self.audit_segments
                and audit_pick(clip.segment_id, self.audit_segments, len(self.known))
            ):
                expected = self.reference(clip.audio)  # None: the reference could not run it (out of memory)
                if expected is not None:
                    self.audit.add(clip.segment_id, tokens, expected)
            report.encoded += 1
            report.audio_seconds += len(clip.audio) / SAMPLE_RATE
            report.tokens += len(tokens)
            report.resampled += clip.source_rate != SAMPLE_RATE
            report.downmixed += clip.source_channels > 1
            yield clip.segment_id, tokens

    def settle(self, start: float) -> dict[str, Any]:
        """The report, once every row is in: it goes into the token file's key-value metadata."""
        report = self.report
        for seg in sorted(self.known - self.seen):
            self.rejects.append(
                Reject(seg, Reason.MISSING_FROM_TAR, "id in metadata.parquet, no FLAC member in audio.tar")
            )
        report.rejected = self.rejects
        if self.reference is not None and self.audit_segments > 0:
            report.audit = self.audit
            log.info(
                "shard %s: audit of %d segments: token agreement %s",
                self.shard,
                self.audit.segments,
                self.audit.token_agreement,
            )
        report.wall_seconds = time.perf_counter() - start
        report.finished_at = utc_now()
        return report.as_dict()

    def tick(self) -> Tick:
        """For the progress lines: segments settled / known so far (the metadata's ids, or the tar's members once
        more of them were read), audio encoded."""
        done = self.report.encoded + len(self.rejects)
        return Tick(done, max(len(self.known), self.report.segments_in_tar, done), self.report.audio_seconds)
