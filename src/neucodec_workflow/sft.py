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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neucodec_workflow.audio import HOP, SAMPLE_RATE
from neucodec_workflow.tokens_io import read_provenance, tokens_of

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
SECONDS_PER_TOKEN = HOP / SAMPLE_RATE


class SftError(RuntimeError):
    pass


def resolve_columns(shard: str, available: Iterable[str], mapping: dict[str, Any]) -> dict[str, str | None]:
    """Map each field to the first configured column present; ``text`` and ``segment_id`` are required."""
    available = set(available)
    resolved: dict[str, str | None] = {}
    for name in ("segment_id", *FIELDS):
        candidates = mapping.get(name, name)
        candidates = [candidates] if isinstance(candidates, str) else list(candidates)
        resolved[name] = next((c for c in candidates if c in available), None)
        if resolved[name] is None and name in ("segment_id", "text"):
            raise SftError(f"shard {shard}: metadata.parquet has none of the columns {candidates} for {name!r} "
                           f"(columns: {sorted(available)}); set columns.{name} in the config")
    return resolved


def speaker_split(dataset: str | None, speaker: str | None, segment_id: str, validation_fraction: float) -> str:
    """Deterministic split by speaker; rows without a speaker are split by segment id."""
    if validation_fraction <= 0:
        return "train"
    key = f"{dataset}/{speaker}" if speaker else f"segment/{segment_id}"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < validation_fraction else "train"


def shard_rows(shard: str, tokens_path: str | Path | BinaryIO, metadata_path: str | Path | BinaryIO, mapping: dict[str, Any]) -> pd.DataFrame:
    """One shard's encoded segments joined with their metadata, in SFT columns."""
    meta = pd.read_parquet(metadata_path)
    cols = resolve_columns(shard, meta.columns, mapping)
    out = pd.DataFrame({"segment_id": meta[cols["segment_id"]].astype("string")})
    for name in FIELDS:
        src = cols[name]
        out[name] = meta[src] if src else None
    out = out.drop_duplicates("segment_id", keep=False)  # duplicate ids were rejected at encode time
    tokens = pd.read_parquet(tokens_path)
    joined = tokens.merge(out, on="segment_id", how="left", validate="one_to_one")
    if joined["text"].isna().any():
        missing = joined.loc[joined["text"].isna(), "segment_id"].head(5).tolist()
        log.warning("shard %s: %d encoded segments without text, e.g. %s", shard, int(joined["text"].isna().sum()), missing)
    arrays = [tokens_of(b) for b in joined["neucodec_tokens"]]
    encoded_seconds = joined["token_count"].astype("float64") * SECONDS_PER_TOKEN
    duration = pd.to_numeric(joined["duration"], errors="coerce").astype("float64")
    return pd.DataFrame(
        {
            "segment_id": joined["segment_id"].astype(str),
            "text": joined["text"].astype("string"),
            "language": joined["language"].astype("string"),
            "speaker": joined["speaker"].astype("string"),
            "dataset": joined["dataset"].astype("string"),
            "duration": duration.fillna(encoded_seconds),
            "neucodec_tokens": arrays,
            "token_count": joined["token_count"].astype("int32"),
            "shard": shard,
        }
    )


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
    validation_fraction: float = 0.0,
    target_file_mb: float = 500.0,
    rows_per_row_group: int = 20_000,
) -> dict[str, Any]:
    """Write the dataset to ``out_dir`` atomically (built beside it, renamed into place)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    writers = {s: _SplitWriter(tmp / "data", s, int(target_file_mb * 2**20), rows_per_row_group) for s in ("train", "validation")}
    provenance: list[dict[str, Any]] = []
    for shard in shards:
        tokens = tokens_path(shard)  # fetched once: rows, then provenance from the same bytes
        df = shard_rows(shard, tokens, metadata_path(shard), mapping)
        split = [speaker_split(d, s, i, validation_fraction) for d, s, i in zip(df["dataset"], df["speaker"], df["segment_id"], strict=True)]
        for name, part in df.groupby(pd.Series(split, index=df.index), sort=False):
            writers[str(name)].add(part)
        if not isinstance(tokens, (str, Path)):
            tokens.seek(0)
        provenance.append(read_provenance(tokens))
    for w in writers.values():
        w.close()
    summary = {n: {"num_examples": w.rows, "num_bytes": w.bytes, "files": len(w.files), "hours": w.seconds / 3600} for n, w in writers.items() if w.rows}
    codecs = {json.dumps({k: p.get(k) for k in ("codec_id", "revision", "weights_sha256", "random_weights", "seed")}, sort_keys=True) for p in provenance}
    write_card(tmp, summary, [json.loads(c) for c in sorted(codecs)], len(shards))
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


def write_card(root: Path, splits: dict[str, dict[str, Any]], codecs: list[dict[str, Any]], n_shards: int) -> None:
    """README.md with the ``dataset_info`` block (features, splits) and ``configs`` for ``load_dataset``."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    split_dict = SplitDict({n: SplitInfo(name=n, num_bytes=s["num_bytes"], num_examples=s["num_examples"]) for n, s in splits.items()})
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
    lines += ["", "Codec provenance:", "", "```json", json.dumps(codecs, indent=2), "```", ""]
    (root / "README.md").write_text("\n".join(lines))
