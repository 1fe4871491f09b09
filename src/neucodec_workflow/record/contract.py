"""The data contracts (README "Outputs"): shard file names, 16 kHz / 320-sample frames, the per-shard
``neucodec_tokens.parquet`` (written atomically, read), and atomic JSON. No torch: the dataset side imports this.

The token file is the record of a shard: besides the three contract columns, its parquet key-value metadata holds
the provenance (written when the file is opened) and the encode job's report (every segment encoded or rejected
with its reason, speed, device, inline audit; written when the last row is in). Readers of the contract never see
either. A token file made by another tool has neither: it is *foreign*, and is adopted as it is."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TAR = "audio.tar"
METADATA = "metadata.parquet"
TOKENS = "neucodec_tokens.parquet"

SAMPLE_RATE = 16_000
HOP = 320  # samples per token at 16 kHz: tokens = n_samples // HOP
SECONDS_PER_TOKEN = HOP / SAMPLE_RATE

SCHEMA = pa.schema([("segment_id", pa.string()), ("neucodec_tokens", pa.binary()), ("token_count", pa.int32())])
PROVENANCE_KEY = b"neucodec_workflow.provenance"
#: said loudly wherever tokens of seeded random weights (provenance ``random_weights``) are made or summed up
RANDOM_BANNER = (
    "\n" + "!" * 88 + "\n"
    "!!  codec.weights = random: SEEDED RANDOM WEIGHTS. These tokens are NOT neucodec tokens.\n"
    "!!  Use them to test the workflow only. Real weights: codec.weights=neuphonic/neucodec\n" + "!" * 88
)
REPORT_KEY = b"neucodec_workflow.report"


def atomic_path(path: Path) -> Path:
    """A hidden temp name beside ``path``: a reader never sees a half-written file under the real name."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class DiskFullError(OSError):
    """A write that ran out of space (or quota): names the file, what was written, what is free, and what to do."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also as pyarrow reports it (an OSError whose errno is not set)."""
    text = str(exc)
    return isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "errno 28]" in text
    )


def _free_bytes(path: Path) -> int | None:
    for d in (path, *path.parents):
        if d.exists():
            return shutil.disk_usage(d).free
    return None


@contextmanager
def publishing(path: str | Path) -> Iterator[Path]:
    """Write ``path`` atomically: the caller writes the yielded temp path (``atomic_path``), which becomes ``path``
    by rename when the block ends without an error. On any error nothing is published and the temp file is removed;
    a full disk becomes a ``DiskFullError`` naming the file, the bytes written before it, and the space left."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            if not is_disk_full(exc) or isinstance(exc, DiskFullError):
                raise
            written = tmp.stat().st_size if tmp.exists() else 0
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on device writing {path} (it needed more than the {written} bytes written; "
                f"{_free_bytes(path.parent)} bytes free there): nothing was published; free space (or move this "
                "directory to a larger disk), then run the same command again",
            ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def candidates(column: str | list[str]) -> list[str]:
    """A ``columns.*`` setting: one metadata column name, or a list tried in order."""
    return [column] if isinstance(column, str) else list(column)


def pick_column(column: str | list[str], available: Iterable[str]) -> str | None:
    """The first of the candidate columns that the metadata has, else None."""
    present = set(available)
    return next((c for c in candidates(column) if c in present), None)


def write_tokens(
    path: str | Path,
    rows: Iterable[tuple[str, np.ndarray]],
    provenance: dict[str, Any],
    *,
    report: Callable[[], dict[str, Any]] | None = None,
    rows_per_group: int = 2048,
) -> int:
    """Stream ``(segment_id, uint16 tokens)`` rows into the parquet as they come (a row group per
    ``rows_per_group``), provenance in the key-value metadata; ``report()``, called once the last row is in, goes
    into the key-value metadata too. Renamed into place only when complete. Returns the number of rows. Zero rows
    is a valid token file (the contract's schema, no row group, both records): the record of a shard in which no
    segment could be encoded, its report saying why for each.
    """
    path = Path(path)
    schema = SCHEMA.with_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True).encode()})
    written = 0
    with publishing(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            ids: list[str] = []
            blobs: list[bytes] = []
            counts: list[int] = []

            def flush() -> None:
                writer.write_table(pa.table([ids, blobs, pa.array(counts, pa.int32())], schema=schema))
                ids.clear()
                blobs.clear()
                counts.clear()

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
            if report is not None:
                writer.add_key_value_metadata({REPORT_KEY: json.dumps(report(), sort_keys=True)})
    return written


def footer(source: str | Path | BinaryIO) -> dict[bytes, bytes]:
    """The token file's key-value metadata (the parquet footer only, not the rows)."""
    return pq.ParquetFile(source).metadata.metadata or {}


def records_of(meta: dict[bytes, bytes]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """From a token file's ``footer``: the provenance (empty for a foreign file) and the encode job's report (None
    for a foreign one, or one written before reports travelled inside the file)."""
    provenance = json.loads(meta[PROVENANCE_KEY]) if PROVENANCE_KEY in meta else {}
    return provenance, json.loads(meta[REPORT_KEY]) if REPORT_KEY in meta else None


def read_provenance(source: str | Path | BinaryIO) -> dict[str, Any]:
    """How the tokens were made; empty for a foreign token file."""
    return records_of(footer(source))[0]


def read_report(source: str | Path | BinaryIO) -> dict[str, Any] | None:
    """The encode job's report stored in the token file; None when there is none."""
    return records_of(footer(source))[1]


def tokens_of(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u2")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (a reader sees the old file or the new one)."""
    with publishing(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
