"""What is derived from a shard's token file (the record) and its metadata: the shard's report and its parts of the
SFT dataset. Cheap (no model, no audio), and re-made from the token file whenever it is missing or older.

A token file written by this workflow carries the encode job's report in its key-value metadata: the derived report
is that report plus what the dataset step found. A *foreign* token file (made by another tool: no provenance) is
adopted as it is: its report says what can be known from the file and the metadata (rows, tokens, the
``token_count == len(bytes) // 2`` invariant, which metadata ids have no tokens), and ``snakemake audit`` measures its
agreement with the reference encoder.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from neucodec_workflow.dataset.formats import (
    HF,
    SETTINGS_KEY,
    FormatWriter,
    fingerprint,
    format_settings,
    row_settings,
)
from neucodec_workflow.dataset.sft import (
    FIELDS,
    SftError,
    metadata_fields,
    part_path,
    shard_rows,
    speaker_split,
    write_part,
)
from neucodec_workflow.record.contract import (
    REPORT_KEY,
    SCHEMA,
    SECONDS_PER_TOKEN,
    candidates,
    footer,
    records_of,
    write_json,
)
from neucodec_workflow.record.records import Reason, Reject

log = logging.getLogger(__name__)

Source = str | Path | BinaryIO

# what kind of record a token file is
WORKFLOW = "workflow"  # written by this workflow: provenance and the encode job's report inside
FOREIGN = "foreign"  # written by another tool: the contract's columns only
WITHOUT_REPORT = "workflow_without_report"  # written by this workflow before reports travelled inside (migrate.py)
FAILED = "failed"  # could not be derived: its token file or metadata is unreadable (derive_or_record_failure)


def _size(source: Source) -> int:
    if isinstance(source, (str, Path)):
        return Path(source).stat().st_size
    return len(source.getbuffer()) if isinstance(source, io.BytesIO) else -1


def _mtime(source: Source) -> float | None:
    """A local token file's modification time (``os.stat``); None for bytes in memory (the caller knows it)."""
    return Path(source).stat().st_mtime if isinstance(source, (str, Path)) else None


def read_token_file(shard: str, source: Source) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any] | None]:
    """The rows, the provenance (empty when foreign) and the embedded encode report (None when there is none); a
    file that is not a token file of the contract is an error naming the shard."""
    try:
        pf = pq.ParquetFile(source)
        missing = [c for c in SCHEMA.names if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"missing the contract's columns {missing} (columns: {pf.schema_arrow.names})")
        rows = pf.read(columns=SCHEMA.names).to_pandas()
        provenance, report = records_of(footer(source))  # JSON in the key-value metadata: unreadable is an error too
    except Exception as exc:
        raise SftError(f"shard {shard}: cannot read neucodec_tokens.parquet: {type(exc).__name__}: {exc}") from exc
    return rows, provenance, report


def read_metadata(shard: str, source: Source, mapping: Mapping[str, Any]) -> pd.DataFrame:
    try:
        meta = pd.read_parquet(source)
    except Exception as exc:
        raise SftError(f"shard {shard}: cannot read metadata.parquet: {type(exc).__name__}: {exc}") from exc
    return metadata_fields(shard, meta, dict(mapping))


def adopted_accounting(shard: str, tokens: pd.DataFrame, fields: pd.DataFrame) -> dict[str, Any]:
    """For a token file without an encode report: what the file and the metadata tell. Every segment (a metadata id
    or a token row's id) is encoded (has a row) or rejected (a metadata id without a row: why is not recorded)."""
    token_ids = set(tokens["segment_id"].astype(str))
    meta_ids = set(fields["segment_id"].dropna().astype(str))
    rejected = [
        Reject(seg, Reason.NO_TOKENS, "the token file has no row for this metadata id").as_dict()
        for seg in sorted(meta_ids - token_ids)
    ]
    n_tokens = int(tokens["token_count"].sum())
    return {
        "shard": shard,
        "segments_in_metadata": len(meta_ids),
        "segments_in_tar": None,  # not read: the tar is only opened by encode and audit jobs
        "segments": len(meta_ids | token_ids),
        "encoded": len(token_ids),
        "rejected_count": len(rejected),
        "rejects_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "rejected": rejected,
        "audio_seconds": n_tokens * SECONDS_PER_TOKEN,
        "tokens": n_tokens,
        "wall_seconds": None,
        "audio_seconds_per_wall_second": None,
        "codec": {},
        "encoder": "",
        "device": "",
        "audit": None,
    }


def group_totals(rows: pd.DataFrame, column: str) -> dict[str, dict[str, Any]]:
    """Segments, tokens and hours of the dataset rows per language (or dataset); null is ``unknown``."""
    keys = rows[column].astype("string").fillna("unknown")
    out: dict[str, dict[str, Any]] = {}
    for key, count in rows.groupby(keys, sort=True)["token_count"]:
        n = int(count.sum())
        out[str(key)] = {"segments": len(count), "tokens": n, "hours": n * SECONDS_PER_TOKEN / 3600}
    return out


# The segment-duration histogram of a shard's dataset rows (seconds from the token count): counts per bin of this
# width from 0 s, trailing empty bins left out; summarize adds the shards' histograms up for the report.
DURATION_BIN_SECONDS = 1.0


def duration_histogram(token_counts: pd.Series) -> list[int]:
    seconds = token_counts.to_numpy() * SECONDS_PER_TOKEN
    bins = (seconds // DURATION_BIN_SECONDS).astype("int64")
    return [int(n) for n in np.bincount(bins)] if len(bins) else []


def derive_shard(
    shard: str,
    tokens_source: Source,
    metadata_source: Source,
    mapping: Mapping[str, Any],
    *,
    report_path: str | Path,
    parts: Mapping[str, Mapping[str, str | Path]],
    validation_fraction: float,
    rows_per_row_group: int,
    writer: FormatWriter | None = None,
    tokens_mtime: float | None = None,
    on_part: Callable[[str | Path], object] | None = None,
) -> dict[str, Any]:
    """Write the shard's report (``report_path``) and its part of each format and split (``parts``: format -> split
    -> where to write it; zero rows is a valid part) from its token file and metadata; return the report. Formats
    other than ``hf`` are written by ``writer`` (formats.py). In the hf dataset (and its index) a part lives at
    ``data/{split}/{shard}.parquet``. Each format's fingerprint (what shaped its parts: ``formats.row_settings``, the
    format's settings and environment) goes into the report (``sft.fingerprint``), each part's summary and, for parquet
    parts, the part's key-value metadata (``formats.SETTINGS_KEY``). ``tokens_mtime``: the token file's modification
    time where the source does not tell it (an S3 object's LastModified); a local path's is read from the file. The
    report keeps it (``token_file.mtime``, with ``bytes``): the status command uses a shard's row of shards.parquet
    instead of the token file's footer while both still match the file. ``on_part(path)``: called as soon as a part
    is written (the derive job uploads it from there)."""
    if tokens_mtime is None:
        tokens_mtime = _mtime(tokens_source)  # before reading: a file replaced meanwhile then matches no more
    tokens, provenance, encoded = read_token_file(shard, tokens_source)
    fields = read_metadata(shard, metadata_source, mapping)
    record, report = _encode_report(shard, tokens, fields, provenance, encoded)
    rows, excluded = shard_rows(shard, tokens, fields)
    split_of = _split_of(shard, rows, parts, validation_fraction)
    others = {fmt: paths for fmt, paths in parts.items() if fmt != HF}
    if others and writer is None:
        raise SftError(f"shard {shard}: formats {sorted(others)} need a FormatWriter")
    # what shapes each format's parts: recorded in the report, in each part's summary (the index) and in the parts'
    # key-value metadata; summarize refuses to tie together parts made otherwise (dataset/consistency.py)
    shaped_by = row_settings(validation_fraction, mapping)
    fingerprints = {
        fmt: fingerprint({**shaped_by, **format_settings(HF, {})}, {})
        if fmt == HF
        else writer.fingerprint(fmt, shaped_by)  # type: ignore[union-attr]
        for fmt in parts
    }
    written, in_formats = _write_parts(
        shard, rows, split_of, parts, fingerprints, rows_per_row_group, writer, on_part or (lambda path: None)
    )
    by_reason = Counter(str(r.reason) for r in excluded)
    report.update(
        record=record,
        provenance=provenance,
        token_file={
            "rows": len(tokens),
            "tokens": int(tokens["token_count"].sum()),
            "bytes": _size(tokens_source),
            "mtime": tokens_mtime,
            # shard_rows checks every row for this first: each mismatch is one exclusion with this reason
            "token_count_mismatches": by_reason[str(Reason.TOKEN_COUNT_MISMATCH)],
        },
        sft={
            "rows_per_split": {split: int((split_of == split).sum()) for split in sorted({*split_of, *written})},
            "parts": written,
            "formats": in_formats,
            "fingerprint": fingerprints,
            **_sft_totals(rows, excluded),
        },
    )
    write_json(report_path, report)
    return report


def _write_parts(
    shard: str,
    rows: pd.DataFrame,
    split_of: pd.Series,
    parts: Mapping[str, Mapping[str, str | Path]],
    fingerprints: Mapping[str, dict[str, Any]],
    rows_per_row_group: int,
    writer: FormatWriter | None,
    on_part: Callable[[str | Path], object],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """Each format's part of each split (hf: ``write_part``; the others: ``writer``), ``on_part`` called after each;
    returns their summaries: hf's per split, the other formats' per format and split."""
    written: dict[str, dict[str, Any]] = {}
    for split, path in parts.get(HF, {}).items():
        metadata = {SETTINGS_KEY: json.dumps(fingerprints[HF], sort_keys=True)}
        written[split] = {
            "path": part_path(split, shard),
            **write_part(path, rows[split_of == split], rows_per_row_group, metadata),
            "fingerprint": fingerprints[HF]["sha256"],
        }
        on_part(path)
    in_formats: dict[str, dict[str, Any]] = {}
    for fmt, paths in parts.items():
        if fmt == HF:
            continue
        assert writer is not None
        in_formats[fmt] = {}
        for split, path in paths.items():
            in_formats[fmt][split] = {
                **writer.write(
                    fmt, shard, split, rows[split_of == split].reset_index(drop=True), path, fingerprints[fmt]
                ),
                "fingerprint": fingerprints[fmt]["sha256"],
            }
            on_part(path)
    return written, in_formats


def _encode_report(
    shard: str,
    tokens: pd.DataFrame,
    fields: pd.DataFrame,
    provenance: dict[str, Any],
    encoded: dict[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    """The kind of record a token file is, and the report the shard's report starts from: the encode job's report
    inside it, else what the file and the metadata tell (``adopted_accounting``)."""
    if encoded is not None:
        return WORKFLOW, dict(encoded)
    record = WITHOUT_REPORT if provenance else FOREIGN
    report = adopted_accounting(shard, tokens, fields)
    report["codec"] = provenance
    log.warning("shard %s: %s token file (no encode report inside): adopted as it is", shard, record)
    return record, report


def _split_of(
    shard: str, rows: pd.DataFrame, parts: Mapping[str, Mapping[str, str | Path]], validation_fraction: float
) -> pd.Series:
    """Each dataset row's split (by speaker); every split must have a part in every format."""
    split_of = pd.Series(
        [
            speaker_split(d, s, i, validation_fraction)
            for d, s, i in zip(rows["dataset"], rows["speaker"], rows["segment_id"], strict=True)
        ],
        index=rows.index,
        dtype="string",
    )
    for fmt, paths in parts.items():
        unknown = set(split_of) - set(paths)
        if unknown:
            raise SftError(f"shard {shard}: rows fall in splits {sorted(unknown)} that have no {fmt} part")
    return split_of


def _sft_totals(rows: pd.DataFrame, excluded: list[Reject]) -> dict[str, Any]:
    """The report's counts of the dataset rows: rows excluded (by reason, and each), totals per language and per
    dataset, the duration histogram."""
    by_reason = Counter(str(r.reason) for r in excluded)
    return {
        "excluded_by_reason": dict(sorted(by_reason.items())),
        "excluded": [r.as_dict() for r in excluded],
        "per_language": group_totals(rows, "language"),
        "per_dataset": group_totals(rows, "dataset"),
        "duration_histogram": {
            "bin_seconds": DURATION_BIN_SECONDS,
            "counts": duration_histogram(rows["token_count"]),
        },
    }


def derive_or_record_failure(
    shard: str, tokens_source: Source, metadata_source: Source, mapping: Mapping[str, Any], **kw: Any
) -> dict[str, Any]:
    """``derive_shard`` (``kw``: its keyword arguments); or, where the shard's token file or metadata is not what the
    contract says (``SftError``: not parquet, truncated, without the contract's columns, unreadable key-value
    metadata, no ``segment_id`` / ``text`` column), a report that records the failure (``record: failed``, ``error``:
    why; zero counts) and empty parts in every format, so that a derive job of 100 shards keeps the other shards'
    work: Snakemake removes every output of a failed job. ``summarize`` refuses a failed report, naming the shard
    (``refuse_failed``); a token file or metadata newer than the report (the fix) re-derives that shard alone. Errors
    of reading or writing (S3, disk) still fail the job: they are not the shard's, and the rerun does it again."""
    tokens_mtime = kw.pop("tokens_mtime", None)
    if tokens_mtime is None:
        tokens_mtime = _mtime(tokens_source)
    try:
        return derive_shard(shard, tokens_source, metadata_source, mapping, tokens_mtime=tokens_mtime, **kw)
    except SftError as exc:
        error = str(exc)
    log.error("shard %s: NOT derived (its report records the failure; summarize will name it): %s", shard, error)
    # the same code writes the parts, from nothing: an empty token file whose report is the failure's
    failure = {
        **adopted_accounting(shard, SCHEMA.empty_table().to_pandas(), pd.DataFrame({"segment_id": []})),
        "error": error,
    }
    empty_tokens = io.BytesIO()
    pq.write_table(SCHEMA.empty_table().replace_schema_metadata({REPORT_KEY: json.dumps(failure)}), empty_tokens)
    columns = {name: (candidates(mapping[name]) or [name])[0] for name in ("segment_id", *FIELDS)}
    empty_metadata = io.BytesIO()
    pd.DataFrame({column: pd.Series([], dtype="string") for column in dict.fromkeys(columns.values())}).to_parquet(
        empty_metadata
    )
    report = derive_shard(shard, empty_tokens, empty_metadata, mapping, tokens_mtime=tokens_mtime, **kw)
    report.update(record=FAILED, error=error)
    report["token_file"].update(rows=None, tokens=None, bytes=_size(tokens_source))  # not readable: unknown
    write_json(kw["report_path"], report)
    return report


class FailedShardsError(SftError):
    """Shards whose reports record that they could not be derived (``derive_or_record_failure``)."""


def failed_derives(reports: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The shards whose report records a failure: shard, stage (derive) and error, as stats.json lists them."""
    return [{"shard": r["shard"], "stage": "derive", "error": r["error"]} for r in reports if r.get("record") == FAILED]


def refuse_failed(reports: list[dict[str, Any]], paths: list[str]) -> None:
    """``FailedShardsError`` naming every shard whose report records a failure, with its reason and what to do; a
    dataset, its card and its stats must not go out without them unsaid."""
    failed = [(r, path) for r, path in zip(reports, paths, strict=True) if r.get("record") == FAILED]
    if not failed:
        return

    def why(report: dict[str, Any]) -> str:
        return str(report["error"]).removeprefix(f"shard {report['shard']}: ")

    lines = [
        f"summarize: nothing was written: {len(failed)} of {len(reports)} shards could not be derived (their token "
        "file or metadata is unreadable); their reports record it, the other shards' reports and parts are made:",
        *(f"  {r['shard']}: {why(r)}" for r, _ in failed),
        "Fix each one's token file (or delete it: snakemake encodes the shard again) or its metadata.parquet, then "
        "run snakemake again: a token file or metadata newer than the report re-derives that shard alone "
        "(`snakemake verify` checks the token files). Where the config was the cause (columns.*), fix it, remove "
        "these reports and run again:",
        *(f"  {path}" for _, path in failed),
    ]
    raise FailedShardsError("\n".join(lines))
