"""The per-shard ``neucodec_tokens.parquet`` contract: write atomically, read, validate."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("segment_id", pa.string()), ("neucodec_tokens", pa.binary()), ("token_count", pa.int32())])
PROVENANCE_KEY = b"neucodec_workflow.provenance"


def atomic_path(path: Path) -> Path:
    """A hidden temp name beside ``path``: a reader never sees a half-written file under the real name."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class NoRowsError(ValueError):
    """Nothing to write: an empty tokens file is never published."""


def write_tokens(path: str | Path, rows: Iterable[tuple[str, np.ndarray]], provenance: dict[str, Any], *,
                 rows_per_group: int = 2048) -> int:
    """Stream ``(segment_id, uint16 tokens)`` rows into the parquet as they come (a row group per
    ``rows_per_group``), provenance in the key-value metadata; renamed into place only when complete.
    Returns the number of rows; raises ``NoRowsError`` (publishing nothing) when there are none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = SCHEMA.with_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()})
    tmp = atomic_path(path)
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            ids: list[str] = []
            blobs: list[bytes] = []
            counts: list[int] = []

            def flush() -> None:
                writer.write_table(pa.table([ids, blobs, pa.array(counts, pa.int32())], schema=schema))
                ids.clear(), blobs.clear(), counts.clear()

            for segment_id, tokens in rows:
                tokens = np.asarray(tokens)
                if tokens.min(initial=0) < 0 or tokens.max(initial=0) > 0xFFFF:
                    raise ValueError(f"segment {segment_id}: token out of uint16 range")
                ids.append(segment_id)
                blobs.append(np.asarray(tokens, "<u2").tobytes())
                counts.append(len(tokens))
                written += 1
                if len(ids) >= rows_per_group:
                    flush()
            if ids:
                flush()
        if not written:
            raise NoRowsError(f"no rows for {path.name}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def read_provenance(path: str | Path | BinaryIO) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[PROVENANCE_KEY]) if PROVENANCE_KEY in meta else {}


def tokens_of(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u2")
