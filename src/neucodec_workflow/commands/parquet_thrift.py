"""The parquet footer's own thrift (``FileMetaData``), for what pyarrow does not expose: ``snakemake verify`` reads
here the column chunks' size statistics (the total length of the ``neucodec_tokens`` values) and the page index and
bloom filter offsets. pyarrow 26 (pinned) exposes neither the size statistics nor the page-index offsets, so the
footer's thrift compact protocol is parsed here: ``raw_footer`` gives nested {field id: value} dicts, and
``byte_regions`` and ``value_bytes`` read the fields verify needs out of them (the field ids of parquet.thrift).

The bytes parsed are pyarrow's own serialization of the footer it parsed (byte for byte the stored one for the
fields it knows), so this parser never sees unchecked bytes.
"""

from __future__ import annotations

import io
from typing import Any


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(data: bytes, pos: int, kind: int) -> tuple[Any, int]:
    if kind in (1, 2):  # a struct field's boolean lives in its type
        return kind == 1, pos
    if kind == 3:
        return data[pos], pos + 1
    if kind in (4, 5, 6):
        n, pos = _varint(data, pos)
        return _zigzag(n), pos
    if kind == 7:
        return data[pos : pos + 8], pos + 8
    if kind == 8:
        n, pos = _varint(data, pos)
        return data[pos : pos + n], pos + n
    if kind in (9, 10):
        head = data[pos]
        pos += 1
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(data, pos)
        items = []
        for _ in range(size):
            if element in (1, 2):  # a boolean element is a byte of its own
                items.append(data[pos] == 1)
                pos += 1
            else:
                item, pos = _value(data, pos, element)
                items.append(item)
        return items, pos
    if kind == 11:
        size, pos = _varint(data, pos)
        if not size:
            return {}, pos
        types = data[pos]
        pos += 1
        out = {}
        for _ in range(size):
            key, pos = _value(data, pos, types >> 4)
            out[key], pos = _value(data, pos, types & 0x0F)
        return out, pos
    if kind == 12:
        return _struct(data, pos)
    raise ValueError(f"thrift type {kind} at byte {pos}")


def _struct(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """A thrift compact-protocol struct as {field id: value}."""
    out: dict[int, Any] = {}
    last = 0
    while True:
        head = data[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, kind = head >> 4, head & 0x0F
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(data, pos)
            fid = _zigzag(raw)
        out[fid], pos = _value(data, pos, kind)
        last = fid


def raw_footer(metadata: Any) -> dict[int, Any]:
    """The footer's thrift ``FileMetaData`` as nested {field id: value} dicts, for what pyarrow does not expose (size
    statistics, page index offsets). From pyarrow's own serialization of the parsed footer (byte for byte the stored
    one for the fields it knows), so this parser never sees unchecked bytes."""
    buf = io.BytesIO()
    metadata.write_metadata_file(buf)
    return _struct(buf.getvalue()[4:-8], 0)[0]


def byte_regions(raw: dict[int, Any]) -> tuple[list[tuple[int, int, str]], bool]:
    """(start, length, what) of every byte range the footer says the file holds before it; False when one's length is
    not known (a bloom filter without its length)."""
    regions, complete = [], True
    for g, group in enumerate(raw.get(4, [])):
        for c, chunk in enumerate(group.get(1, [])):
            meta = chunk.get(3, {})
            name = ".".join(p.decode(errors="replace") for p in meta.get(3, [])) or f"column {c}"
            where = f"row group {g}, {name}"
            starts = [o for o in (meta.get(9), meta.get(11)) if o is not None and o > 0]
            regions.append((min(starts) if starts else 0, meta.get(7, 0), f"{where}: column chunk"))
            if chunk.get(4) is not None:
                regions.append((chunk[4], chunk.get(5, 0), f"{where}: offset index"))
            if chunk.get(6) is not None:
                regions.append((chunk[6], chunk.get(7, 0), f"{where}: column index"))
            if meta.get(14) is not None:
                if meta.get(15) is None:
                    complete = False
                else:
                    regions.append((meta[14], meta[15], f"{where}: bloom filter"))
    return sorted(regions), complete


def value_bytes(raw: dict[int, Any], column: str) -> list[int | None]:
    """The total length of a flat column's values in each row group (its size statistics: field 16 of
    ``ColumnMetaData``, their ``unencoded_byte_array_data_bytes``); None where a column chunk has none."""
    return [
        chunk.get(3, {}).get(16, {}).get(1)
        for group in raw.get(4, [])
        for chunk in group.get(1, [])
        if chunk.get(3, {}).get(3) == [column.encode()]
    ]
