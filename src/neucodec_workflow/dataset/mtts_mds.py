"""The ``multilingual_tts`` format's blocks (``mtts.py``) and their MDS file.

Rows are packed greedily, in order, into blocks of at most ``block_tokens`` (``pack``). A shard's blocks of one split
are one MosaicML Streaming MDS shard file, byte for byte what ``streaming.MDSWriter`` writes for them with
``MDS_COLUMNS`` (``streaming`` itself is not imported: it pulls torch). The file is encoded about ``CHUNK_TOKENS`` at
a time in one reused buffer while it is written and hashed, so a shard's many voice-cloning rows never sit in memory
at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from neucodec_workflow.dataset.mtts_rows import Rows
from neucodec_workflow.dataset.mtts_tokenizer import MttsError
from neucodec_workflow.record.contract import publishing

# the MDS columns of the upstream notebooks and the trainer; "uint32" is their own encoding (raw bytes of a uint32
# array, registered over streaming's scalar one), so every column has a variable size
MDS_COLUMNS = {
    "input_ids": "uint32",
    "position_ids": "uint32",
    "attention_mask": "uint32",
    "audio": "str",
    "text": "str",
}
MDS_HASHES = ["sha1", "xxh64"]
MDS_SIZE_LIMIT = (1 << 32) - 1  # one file per shard: sample offsets are uint32, so a file holds at most this
CHUNK_TOKENS = 1 << 20  # tokens (ids and positions) encoded at a time while writing


def pack(lengths: np.ndarray, block_tokens: int) -> np.ndarray:
    """Greedy, order-preserving packing: the row boundaries of the blocks (``blocks + 1`` indices). A row that would
    overflow the open block starts the next one (an exact fit stays); a row longer than a block is a block of its own
    (the trainer skips such a block: ``build_rows`` leaves those rows out)."""
    cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    bounds = [0]
    i, n = 0, len(lengths)
    while i < n:
        j = int(np.searchsorted(cum, cum[i] + block_tokens, side="right")) - 1
        i = max(j, i + 1)
        bounds.append(i)
    return np.array(bounds, np.int64)


@dataclass
class Packed:
    """Rows packed into blocks: block ``b`` is rows ``bounds[b] : bounds[b + 1]``."""

    rows: Rows
    bounds: np.ndarray
    block_tokens: int

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @property
    def tokens(self) -> int:
        return int(self.rows.lengths.sum())

    def block(self, b: int) -> dict[str, np.ndarray]:
        """One block as the trainer reads it: ``input_ids``, ``position_ids`` (restarting at 0 for every row) and
        ``attention_mask`` (the row lengths), all uint32."""
        lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
        lengths = self.rows.lengths[lo:hi]
        ids = self.rows.ids(lo, hi)
        return {"input_ids": ids, "position_ids": positions(lengths), "attention_mask": lengths.astype(np.uint32)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.block(b) for b in range(len(self)))


def positions(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each row of ``lengths``, one after the other (uint32)."""
    lengths = lengths.astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    return (np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.uint32)


def mds_config() -> bytes:
    """The shard-writing configuration MDSWriter puts in each file and in the index entry."""
    return json.dumps(_config(), sort_keys=True).encode()


def _config() -> dict[str, Any]:
    names = sorted(MDS_COLUMNS)
    return {
        "version": 2,
        "format": "mds",
        "compression": None,
        "hashes": MDS_HASHES,
        "size_limit": MDS_SIZE_LIMIT,
        "column_names": names,
        "column_encodings": [MDS_COLUMNS[c] for c in names],
        "column_sizes": [None] * len(names),
    }


def write_mds(path: Path, blocks: Packed, basename: str) -> dict[str, Any]:
    """All ``blocks`` as one MDS shard file at ``path`` (atomically; zero blocks is a valid, empty file), the bytes
    ``streaming.MDSWriter`` writes for them with ``MDS_COLUMNS``, no compression, ``MDS_HASHES`` and ``size_limit``
    ``MDS_SIZE_LIMIT``; ``audio`` and ``text`` are empty. Returns the file's index.json entry, ``basename`` being its
    path relative to the index."""
    path = Path(path)
    config = mds_config()
    rows = blocks.rows
    bounds = blocks.bounds
    row_cum = np.concatenate([[0], np.cumsum(rows.lengths, dtype=np.int64)])
    n_rows = np.diff(bounds)
    n_tokens = np.diff(row_cum[bounds])
    sizes = 4 * (5 + n_rows + 2 * n_tokens)  # the five column sizes, attention_mask, input_ids, position_ids
    head = 4 + 4 * len(sizes) + 4 + len(config)
    total = head + int(sizes.sum())
    if total > MDS_SIZE_LIMIT:
        raise MttsError(
            f"{basename}: {total} bytes, over the {MDS_SIZE_LIMIT} an MDS file can address (uint32 offsets); "
            f"lower pairs_per_speaker or use smaller shards"
        )
    offsets = np.concatenate([[0], np.cumsum(sizes)]) + head
    header = np.uint32(len(sizes)).tobytes() + offsets.astype(np.uint32).tobytes() + config
    sha1, xxh64 = hashlib.sha1(), xxhash.xxh64()
    with publishing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            sha1.update(header)
            xxh64.update(header)
            for piece in _samples(blocks, n_rows, n_tokens):
                sha1.update(piece)
                xxh64.update(piece)
                f.write(piece)
        if tmp.stat().st_size != total:
            raise MttsError(f"{basename}: wrote {tmp.stat().st_size} bytes, expected {total}")
    return {
        "samples": len(sizes),
        "raw_data": {
            "basename": basename,
            "bytes": total,
            "hashes": {"sha1": sha1.hexdigest(), "xxh64": xxh64.hexdigest()},
        },
        "zip_data": None,
        **_config(),
    }


def _samples(blocks: Packed, n_rows: np.ndarray, n_tokens: np.ndarray) -> Iterator[memoryview]:
    """The encoded samples, about ``CHUNK_TOKENS`` at a time in one reused buffer: per block the five column sizes,
    then attention_mask, (audio: empty), input_ids, position_ids, (text: empty)."""
    rows, bounds = blocks.rows, blocks.bounds.tolist()
    source, src, length = rows.source, rows.src.tolist(), rows.length.tolist()
    row_spans, lengths = rows.row_spans.tolist(), rows.lengths.tolist()
    ramp = np.arange(max(lengths, default=0), dtype=np.uint32)
    words = (5 + n_rows + 2 * n_tokens).tolist()
    out = np.empty(max([2 * CHUNK_TOKENS, *words]), np.uint32)
    o = 0
    for b, need in enumerate(words):
        if o + need > len(out):
            yield out[:o].data.cast("B")
            o = 0
        r0, r1 = bounds[b], bounds[b + 1]
        out[o : o + 5] = (4 * (r1 - r0), 0, 4 * int(n_tokens[b]), 4 * int(n_tokens[b]), 0)
        out[o + 5 : o + 5 + r1 - r0] = rows.lengths[r0:r1]
        o += 5 + r1 - r0
        k0, k1 = row_spans[r0], row_spans[r1]
        s, n = src[k0], length[k0]
        for k in range(k0 + 1, k1):  # spans that follow each other in the buffer are copied at once
            if src[k] == s + n:
                n += length[k]
            else:
                out[o : o + n] = source[s : s + n]
                o += n
                s, n = src[k], length[k]
        out[o : o + n] = source[s : s + n]
        o += n
        for n in lengths[r0:r1]:
            out[o : o + n] = ramp[:n]
            o += n
    if o:
        yield out[:o].data.cast("B")


def merge_index(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``index.json`` of a dataset root from its files' entries (``write_mds``), in the given order; files with
    no samples are left out. ``streaming.LocalDataset(local=root)`` opens it when each file is at
    ``root/<basename>``."""
    return {"version": 2, "shards": [e for e in entries if e["samples"]]}
