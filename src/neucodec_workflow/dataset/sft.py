"""Assemble the SFT / Hugging Face dataset from per-shard tokens + metadata, one shard at a time.

Layout (Hugging Face): ``data/{split}-XXXXX-of-YYYYY.parquet`` with explicit row groups and a
``README.md`` card holding the ``dataset_info`` features block and ``configs``. Splits are by
speaker (hash of dataset + speaker), so no speaker is in both train and validation, and they are
deterministic. Memory is bounded by one shard plus one row group.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neucodec_workflow.contract import (
    SECONDS_PER_TOKEN,
    candidates,
    pick_column,
    read_provenance,
    tokens_of,
    write_json,
)
from neucodec_workflow.records import Reason, Reject

log = logging.getLogger(__name__)

FIELDS = ("text", "language", "speaker", "dataset", "duration")
SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("speaker", pa.string()),
        ("dataset", pa.string()),
        ("duration", pa.float64()),
        ("neucodec_tokens", pa.list_(pa.uint16())),
        ("token_count", pa.int32()),
        ("shard", pa.string()),
    ]
)


EXCLUDED = "excluded.json"  # encoded segments left out of the dataset, with their reason


class SftError(RuntimeError):
    pass


def resolve_columns(shard: str, available: Iterable[str], mapping: dict[str, Any]) -> dict[str, str | None]:
    """Map each field to the first configured column present; ``text`` and ``segment_id`` are required."""
    available = list(available)
    resolved: dict[str, str | None] = {}
    for name in ("segment_id", *FIELDS):
        resolved[name] = pick_column(mapping[name], available)
        if resolved[name] is None and name in ("segment_id", "text"):
            raise SftError(
                f"shard {shard}: metadata.parquet has none of the columns {candidates(mapping[name])} for {name!r} "
                f"(columns: {sorted(available)}); set columns.{name} in the config"
            )
    return resolved


def speaker_split(dataset: str | None, speaker: str | None, segment_id: str, validation_fraction: float) -> str:
    """Deterministic split by speaker; rows without a speaker are split by segment id."""
    if validation_fraction <= 0:
        return "train"
    key = f"{dataset}/{speaker}" if speaker else f"segment/{segment_id}"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < validation_fraction else "train"


def shard_rows(
    shard: str, tokens_path: str | Path | BinaryIO, metadata_path: str | Path | BinaryIO, mapping: dict[str, Any]
) -> tuple[pd.DataFrame, list[Reject]]:
    """One shard's encoded segments joined with their metadata, in SFT columns, and the encoded segments that cannot
    be a training row, each with its reason: no metadata row, an ambiguous one, no text, an unparseable duration,
    a second row for the same id in the tokens file. A missing duration is the encoded length (exact)."""
    meta = pd.read_parquet(metadata_path)
    cols = resolve_columns(shard, meta.columns, mapping)
    fields = pd.DataFrame({"segment_id": meta[cols["segment_id"]].astype("string")})
    for name in FIELDS:
        src = cols[name]
        fields[name] = meta[src] if src else None
    tokens = pd.read_parquet(tokens_path)
    tokens["segment_id"] = tokens["segment_id"].astype("string")
    excluded: list[Reject] = []
    joined = tokens  # narrowed by exclude() and the merge below

    def exclude(mask: pd.Series, reason: Reason, detail: Callable[[pd.DataFrame], list[str]] | str = "") -> None:
        nonlocal joined
        rows = joined[mask]
        details = detail(rows) if callable(detail) else [detail] * len(rows)
        excluded.extend(Reject(str(s), reason, d) for s, d in zip(rows["segment_id"], details, strict=True))
        joined = joined[~mask]

    exclude(
        joined["segment_id"].duplicated(keep="first"), Reason.DUPLICATE_IN_TOKENS, "a row with this id came earlier"
    )
    ambiguous = set(fields.loc[fields["segment_id"].duplicated(keep=False), "segment_id"])
    exclude(joined["segment_id"].isin(ambiguous), Reason.DUPLICATE_IN_METADATA, "several metadata rows")
    joined = joined.merge(
        fields.drop_duplicates("segment_id"), on="segment_id", how="left", validate="one_to_one", indicator=True
    )
    exclude(joined["_merge"] == "left_only", Reason.NOT_IN_METADATA, "tokens without a metadata row")
    text = joined["text"].astype("string").str.strip()
    exclude(
        text.isna() | (text == ""),
        Reason.NO_TEXT,
        lambda rows: ["null" if pd.isna(v) else repr(v) for v in rows["text"]],
    )
    raw = joined["duration"]
    duration = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = raw.notna() & ~(np.isfinite(duration) & (duration >= 0))
    exclude(bad, Reason.BAD_DURATION, lambda rows: [f"duration {v!r}" for v in rows["duration"]])
    duration = duration[~bad]
    if excluded:
        by_reason = Counter(str(r.reason) for r in excluded)
        log.warning(
            "shard %s: %d encoded segments left out of the dataset %s, e.g. %s",
            shard,
            len(excluded),
            dict(by_reason),
            [(r.segment_id, str(r.reason)) for r in excluded[:5]],
        )
    encoded_seconds = joined["token_count"].astype("float64") * SECONDS_PER_TOKEN
    rows = pd.DataFrame(
        {
            "segment_id": joined["segment_id"].astype(str),
            "text": joined["text"].astype("string"),
            "language": joined["language"].astype("string"),
            "speaker": joined["speaker"].astype("string"),
            "dataset": joined["dataset"].astype("string"),
            "duration": duration.fillna(encoded_seconds),
            "neucodec_tokens": [tokens_of(b) for b in joined["neucodec_tokens"]],
            "token_count": joined["token_count"].astype("int32"),
            "shard": shard,
        }
    )
    return rows.reset_index(drop=True), excluded


@dataclass
class _SplitWriter:
    """Rolls ``{split}-NNNNN.parquet`` files at ~``target_bytes``; flushes a row group every ``group_rows``."""

    directory: Path
    split: str
    target_bytes: int
    group_rows: int
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    _writer: pq.ParquetWriter | None = None
    _buffer: list[pd.DataFrame] = field(default_factory=list)
    _buffered: int = 0
    _file_bytes: int = 0

    def add(self, df: pd.DataFrame) -> None:
        self.seconds += float(df["token_count"].sum()) * SECONDS_PER_TOKEN
        for start in range(0, len(df), self.group_rows):
            part = df.iloc[start : start + self.group_rows]
            self._buffer.append(part)
            self._buffered += len(part)
            if self._buffered >= self.group_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        table = pa.Table.from_pandas(pd.concat(self._buffer, ignore_index=True), schema=SCHEMA, preserve_index=False)
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            path = self.directory / f"{self.split}-{len(self.files):05d}.parquet.partial"
            self.files.append(path)
            self._writer = pq.ParquetWriter(path, SCHEMA, compression="zstd")
            self._file_bytes = 0
        self._writer.write_table(table, row_group_size=len(table))
        self.rows += len(table)
        self.bytes += table.nbytes
        self._file_bytes += table.nbytes
        if self._file_bytes >= self.target_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        final = []
        for i, path in enumerate(self.files):
            target = path.with_name(f"{self.split}-{i:05d}-of-{len(self.files):05d}.parquet")
            path.rename(target)
            final.append(target)
        return final


def assemble_sft(
    shards: list[str],
    tokens_path: Callable[[str], str | BinaryIO],
    metadata_path: Callable[[str], str | BinaryIO],
    out_dir: str | Path,
    mapping: dict[str, Any],
    *,
    validation_fraction: float,
    target_file_mb: float,
    rows_per_row_group: int,
) -> dict[str, Any]:
    """Write the dataset to ``out_dir`` atomically (built beside it, renamed into place). Encoded segments that cannot
    be a training row are left out and listed with their reason in ``excluded.json``; returns the split summary."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    writers = {
        s: _SplitWriter(tmp / "data", s, int(target_file_mb * 2**20), rows_per_row_group)
        for s in ("train", "validation")
    }
    provenance: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for shard in shards:
        tokens = tokens_path(shard)  # fetched once: rows, then provenance from the same bytes
        df, rejects = shard_rows(shard, tokens, metadata_path(shard), mapping)
        excluded += [{"shard": shard, **r.as_dict()} for r in rejects]
        split = [
            speaker_split(d, s, i, validation_fraction)
            for d, s, i in zip(df["dataset"], df["speaker"], df["segment_id"], strict=True)
        ]
        for name, part in df.groupby(pd.Series(split, index=df.index), sort=False):
            writers[str(name)].add(part)
        if not isinstance(tokens, (str, Path)):
            tokens.seek(0)
        provenance.append(read_provenance(tokens))
    for w in writers.values():
        w.close()
    summary = {
        n: {"num_examples": w.rows, "num_bytes": w.bytes, "files": len(w.files), "hours": w.seconds / 3600}
        for n, w in writers.items()
        if w.rows
    }
    codecs = {
        json.dumps(
            {k: p.get(k) for k in ("codec_id", "revision", "weights_sha256", "random_weights", "seed")}, sort_keys=True
        )
        for p in provenance
    }
    by_reason = dict(sorted(Counter(r["reason"] for r in excluded).items()))
    write_json(tmp / EXCLUDED, {"excluded": len(excluded), "excluded_by_reason": by_reason, "segments": excluded})
    write_card(tmp, summary, [json.loads(c) for c in sorted(codecs)], len(shards), by_reason)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return summary


def features():
    from datasets import Features, List, Value

    return Features(
        {
            "segment_id": Value("string"),
            "text": Value("string"),
            "language": Value("string"),
            "speaker": Value("string"),
            "dataset": Value("string"),
            "duration": Value("float64"),
            "neucodec_tokens": List(Value("uint16")),
            "token_count": Value("int32"),
            "shard": Value("string"),
        }
    )


def write_card(
    root: Path,
    splits: dict[str, dict[str, Any]],
    codecs: list[dict[str, Any]],
    n_shards: int,
    excluded_by_reason: dict[str, int],
) -> None:
    """README.md with the ``dataset_info`` block (features, splits) and ``configs`` for ``load_dataset``."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    split_dict = SplitDict(
        {n: SplitInfo(name=n, num_bytes=s["num_bytes"], num_examples=s["num_examples"]) for n, s in splits.items()}
    )
    card = DatasetCardData(
        configs=[{"config_name": "default", "data_files": [{"split": n, "path": f"data/{n}-*"} for n in splits]}],
        tags=["audio", "neucodec", "tts"],
    )
    DatasetInfosDict({"default": DatasetInfo(features=features(), splits=split_dict)}).to_dataset_card_data(card)
    random = any(c.get("random_weights") for c in codecs)
    lines = [
        "---",
        card.to_yaml(),
        "---",
        "",
        "# neucodec tokens SFT dataset",
        "",
        "> **WARNING: encoded with RANDOM test weights: these are not real neucodec tokens.**" if random else "",
        "",
        f"One row per encoded segment from {n_shards} shards, joined with its metadata. `neucodec_tokens` are",
        "50 Hz neucodec FSQ codes (0-65535); `token_count == len(neucodec_tokens) == n_samples_16k // 320`.",
        "",
        "| split | rows | hours |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {s['num_examples']} | {s['hours']:.3f} |" for n, s in splits.items()]
    if excluded_by_reason:
        lines += ["", f"Encoded segments left out (each listed in `{EXCLUDED}`): {excluded_by_reason}"]
    lines += ["", "Codec provenance:", "", "```json", json.dumps(codecs, indent=2), "```", ""]
    (root / "README.md").write_text("\n".join(lines))
