"""``snakemake verify``: find corrupt token files without re-encoding, from their parquet footers.

For each shard's ``neucodec_tokens.parquet`` (a local path or an ``s3://`` URL) only the ends of the file are read:
its first 4 bytes and its footer (S3: a ranged GET of bytes 0-3, which also gives the object's size, and the footer
reader of ``status``: one ranged GET of the last 64 KiB, a second one only for a footer longer than that; local: the
same bytes, through pyarrow's metadata read). So a check costs 2 requests per shard in S3 (3 for a footer over
64 KiB), 1 for a missing token file, and nothing is downloaded. The footer is checked against the contract
(``contract.SCHEMA``) and against the record that travels inside it (the encode job's report, ``REPORT_KEY``):

* **readable**: the file starts with ``PAR1`` and ends with a footer that parses; a truncated file (or one that is
  not parquet at all) fails here, as ``truncated or not parquet``;
* **layout**: every column chunk (and page index or bloom filter) the footer describes lies inside the file, no two
  overlap, and ``4 + chunks + footer + 8`` is the file's size. A file cut or spliced in the middle, or with bytes
  inserted, fails here (for a foreign file written by another tool than Arrow, unexplained bytes between the chunks are
  a note: some writers pad row groups);
* **schema**: ``segment_id`` (string), ``neucodec_tokens`` (binary), ``token_count`` (int32), flat;
* **rows**: the row groups add up to the footer's row count, every column chunk has one value per row, and the row
  count is the record's ``encoded``;
* **nulls**: the statistics of every row group count no null in the three columns;
* **token counts**: the footer's size statistics hold the total length of the ``neucodec_tokens`` values (Arrow's
  writer adds them by default in recent versions, the pinned 26 included; pyarrow does not expose them, so the footer's
  thrift is read here): it must be even, half of it must be the record's ``tokens``, and, since every row's
  ``token_count == len(bytes) // 2``, it must lie between ``rows * min(token_count)`` and ``rows * max(token_count)``
  (the column statistics); the record's ``tokens`` must lie there too.

A foreign token file (no report) has no record: the row and token totals are not compared, which is said in the
shard's ``notes``, not as a problem. A footer without statistics or size statistics (an older writer) leaves those
checks undone, also said in ``notes``.

What a footer cannot tell: anything inside the pages. A byte flipped, or a block overwritten with as many bytes,
inside a data or dictionary page leaves every size and every count in the footer as it was. ``full`` mode
(``verify.full: true``) reads each whole file (S3: one GET of the object) and decodes every row group: a page that
does not decompress or decode, a ``token_count`` that is not ``len(neucodec_tokens) // 2``, a null, a row total or a
token total that differs from the record, or column values outside the footer's min/max statistics are caught there.
Even full mode cannot catch a flipped byte that decodes to another valid value (e.g. inside a token sequence that zstd
stored uncompressed) unless it changes a column's min or max: the token files carry no page checksums. Only
re-encoding tells such tokens apart (``snakemake audit``).

The codec of each file read (its provenance: ``consistency.codec_identity``) is counted in the report (``codecs``):
two known codecs are ``mixed`` (no bad file, but summarize refuses to make one dataset of them); foreign files are
``unknown``.

A missing token file is a shard not encoded yet: listed as ``missing``, not bad. A file that cannot be read for other
reasons (access denied, the store unreachable after retries) is an ``error``: not judged either way, but it fails
the run too (the check is incomplete).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from neucodec_workflow.dataset.consistency import codec_identity, codec_label
from neucodec_workflow.record.contract import PROVENANCE_KEY, REPORT_KEY, records_of, write_json
from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url

log = logging.getLogger(__name__)

MAGIC = b"PAR1"
THREADS = 10  # footer reads at a time (botocore keeps 10 connections per client)
FULL_THREADS = 4  # whole files in memory at a time in full mode
LOCAL_FOOTER_READ = 64 << 10  # pyarrow reads this much of a file's end for its footer (more for a longer footer)
MAX_LISTED = 5  # ids named in a problem (the count says how many there are)

OK, BAD, MISSING, ERROR = "ok", "bad", "missing", "error"
# the contract's columns at the parquet level: physical type and the logical types that mean the contract's type
COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segment_id": ("BYTE_ARRAY", ("String",)),
    "neucodec_tokens": ("BYTE_ARRAY", ("None",)),
    "token_count": ("INT32", ("None", "Int(bitWidth=32, isSigned=true)")),
}
TOKENS_COLUMN, COUNT_COLUMN = "neucodec_tokens", "token_count"
TRUNCATED = "truncated or not parquet"


class Missing(Exception):
    """The token file does not exist: the shard is not encoded yet."""


class VerifyError(RuntimeError):
    """Some token files are bad (or could not be checked): raised after the report is written."""


# ------------------------------------------------------------------------------------------------- thrift (footer)
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


# ------------------------------------------------------------------------------------------------------ the checks
class _Check:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []


def _regions(raw: dict[int, Any]) -> tuple[list[tuple[int, int, str]], bool]:
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


def _check_layout(check: _Check, metadata: Any, raw: dict[int, Any], size: int, strict: bool) -> None:
    footer_start = size - 8 - int(metadata.serialized_size)
    regions, complete = _regions(raw)
    end = len(MAGIC)
    for start, length, what in regions:
        if start < len(MAGIC) or length < 0 or start + length > footer_start:
            check.problems.append(
                f"{what} (bytes {start}-{start + length}) lies outside the data (bytes 4-{footer_start}): "
                f"the file was cut or bytes were removed"
            )
            return
        if start < end:
            check.problems.append(f"{what} starts at byte {start}, inside the one before it (ends at {end})")
            return
        end = start + length
    if not complete:
        check.notes.append("a bloom filter without its length: the file size is not checked")
        return
    described = len(MAGIC) + sum(length for _, length, _ in regions) + int(metadata.serialized_size) + 8
    if described != size:
        message = (
            f"the file has {size} bytes, its footer describes {described} (column chunks + footer): "
            f"{size - described} bytes unaccounted for"
        )
        if strict:
            check.problems.append(message + ": bytes were inserted or the file was overwritten")
        else:
            check.notes.append(message + " (some writers pad row groups)")


def _check_schema(check: _Check, metadata: Any) -> dict[str, int]:
    """The index of each contract column that has the contract's type."""
    schema = metadata.schema
    found: dict[str, int] = {}
    present = {schema.column(i).path: i for i in range(len(schema))}
    for name, (physical, logical) in COLUMNS.items():
        nested = [path for path in present if path.startswith(f"{name}.")]
        if name not in present:
            check.problems.append(
                f"schema: column {name} is nested ({', '.join(nested)}), the contract says {physical} {logical[-1]}"
                if nested
                else f"schema: no column {name}"
            )
            continue
        col = schema.column(present[name])
        if col.physical_type != physical or str(col.logical_type) not in logical or col.max_repetition_level:
            check.problems.append(
                f"schema: column {name} is {col.physical_type} {col.logical_type}, the contract says "
                f"{physical} {logical[-1]}"
            )
            continue
        found[name] = present[name]
    extra = sorted(set(present) - set(COLUMNS))
    if extra:
        check.notes.append(f"columns beyond the contract: {', '.join(extra)}")
    return found


def _records(meta: dict[bytes, bytes], check: _Check) -> tuple[str, dict[str, Any] | None]:
    """The record's kind (``workflow``, ``workflow_without_report``, ``foreign``) and the report, if readable."""
    readable = {}
    for key in (PROVENANCE_KEY, REPORT_KEY):
        if key not in meta:
            continue
        try:
            json.loads(meta[key])
            readable[key] = meta[key]
        except ValueError as exc:
            check.problems.append(f"record: {key.decode()} in the footer is not JSON ({exc})")
    _, report = records_of(readable)
    if report is not None and not isinstance(report, dict):
        check.problems.append(f"record: the report in the footer is a {type(report).__name__}, not an object")
        report = None
    if REPORT_KEY in meta:
        return "workflow", report
    return ("workflow_without_report" if PROVENANCE_KEY in meta else "foreign"), None


def check_footer(metadata: Any, size: int, head: bytes) -> dict[str, Any]:
    """Every footer-only check of one token file whose footer parsed: ``metadata`` (pyarrow ``FileMetaData``),
    ``size`` (bytes) and ``head`` (its first 4 bytes). Returns problems, notes, the record's kind and report, the rows,
    the tokens the footer accounts for, and where the contract's columns are."""
    check = _Check()
    if head != MAGIC:
        check.problems.append(f"{TRUNCATED}: it does not start with PAR1")
    raw = raw_footer(metadata)
    kind, report = _records(metadata.metadata or {}, check)
    arrow = str(metadata.created_by or "").startswith("parquet-cpp")  # Arrow never pads nor truncates statistics
    _check_layout(check, metadata, raw, size, strict=arrow or kind != "foreign")
    columns = _check_schema(check, metadata)

    rows = int(metadata.num_rows)
    groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
    if sum(int(g.num_rows) for g in groups) != rows:
        check.problems.append(
            f"rows: the footer says {rows}, its row groups hold {sum(int(g.num_rows) for g in groups)}"
        )
    nulls_unknown: set[str] = set()
    count_min: int | None = None
    count_max: int | None = None
    count_stats = True
    for g, group in enumerate(groups):
        for name, index in columns.items():
            chunk = group.column(index)
            if int(chunk.num_values) != int(group.num_rows):
                check.problems.append(f"rows: row group {g} has {group.num_rows} rows but {chunk.num_values} {name}")
            stats = chunk.statistics if chunk.is_stats_set else None
            if stats is None or not stats.has_null_count:
                nulls_unknown.add(name)
            elif stats.null_count:
                check.problems.append(f"nulls: {stats.null_count} in {name} (row group {g})")
            if name == COUNT_COLUMN and int(group.num_rows):
                if stats is None or not stats.has_min_max:
                    count_stats = False
                else:
                    count_min = int(stats.min) if count_min is None else min(count_min, int(stats.min))
                    count_max = int(stats.max) if count_max is None else max(count_max, int(stats.max))
    if nulls_unknown:
        check.notes.append(f"no null counts in the footer for {', '.join(sorted(nulls_unknown))}: nulls not checked")
    if count_min is not None and count_min < 0:
        check.problems.append(f"token counts: a token_count of {count_min}")
    bounds = (
        (rows * count_min, rows * count_max)
        if count_stats and count_min is not None and count_max is not None
        else None
    )
    if COUNT_COLUMN in columns and bounds is None and rows:
        check.notes.append("no min/max statistics of token_count: token counts not bounded")

    # the total length of the token bytes: the size statistics of each column chunk (field 16 of ColumnMetaData)
    footer_tokens: int | None = None
    if TOKENS_COLUMN in columns:
        sizes = [
            chunk.get(3, {}).get(16, {}).get(1)
            for group in raw.get(4, [])
            for chunk in group.get(1, [])
            if chunk.get(3, {}).get(3) == [TOKENS_COLUMN.encode()]
        ]
        if sizes and all(s is not None for s in sizes):
            token_bytes = sum(sizes)
            footer_tokens = token_bytes // 2
            if token_bytes % 2:
                check.problems.append(f"token counts: {token_bytes} bytes of tokens, not whole uint16 tokens")
        elif rows:
            check.notes.append("no size statistics in the footer: the total of the token bytes is not known")
    if footer_tokens is not None and bounds is not None and not bounds[0] <= footer_tokens <= bounds[1]:
        check.problems.append(
            f"token counts: the rows hold {footer_tokens} tokens, but {rows} rows of {count_min}-{count_max} "
            f"(token_count's min/max) hold {bounds[0]}-{bounds[1]}"
        )

    if report is not None:
        encoded, tokens = report.get("encoded"), report.get("tokens")
        if encoded != rows:
            check.problems.append(f"rows: the file has {rows}, the record says {encoded} encoded")
        if footer_tokens is not None and tokens != footer_tokens:
            check.problems.append(f"token counts: the rows hold {footer_tokens} tokens, the record says {tokens}")
        if isinstance(tokens, int) and bounds is not None and not bounds[0] <= tokens <= bounds[1]:
            check.problems.append(
                f"token counts: the record's {tokens} tokens cannot be {rows} rows of {count_min}-{count_max} tokens"
            )
        rejected = report.get("rejected_count")
        if isinstance(rejected, int) and isinstance(encoded, int) and report.get("segments") != encoded + rejected:
            check.problems.append(
                f"record: {report.get('segments')} segments but {encoded} encoded + {rejected} rejected"
            )
    elif kind == "foreign":
        check.notes.append("foreign token file (no record): rows and tokens not compared with a record")
    elif REPORT_KEY not in (metadata.metadata or {}):
        check.notes.append("no report in the file (written before reports travelled inside it): rows not compared")
    provenance: Any = {}
    try:
        provenance = json.loads((metadata.metadata or {}).get(PROVENANCE_KEY) or b"{}")
    except ValueError:
        pass  # a problem already (_records)
    return {
        "problems": check.problems,
        "notes": check.notes,
        "record": kind,
        "codec": codec_identity(provenance) if isinstance(provenance, dict) else None,
        "codec_id": provenance.get("codec_id") if isinstance(provenance, dict) else None,
        "report": report,
        "rows": rows,
        "tokens": footer_tokens,
        "columns": columns,
        "exact_statistics": arrow,
    }


def check_rows(source: Any, metadata: Any, footer: dict[str, Any]) -> list[str]:
    """Full mode: decode every row group of ``source`` (a path or a file object) and check every row against the
    invariant, the footer's statistics and the record."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns: dict[str, int] = footer["columns"]
    if TOKENS_COLUMN not in columns or COUNT_COLUMN not in columns:
        return []  # the schema problem is reported already
    problems: list[str] = []
    pf = pq.ParquetFile(source)
    rows = tokens = mismatches = 0
    mismatched: list[str] = []
    decoded = True
    for g in range(metadata.num_row_groups):
        try:
            table = pf.read_row_group(g, columns=list(columns))
        except Exception as exc:
            problems.append(f"row group {g} does not decode: {type(exc).__name__}: {exc}")
            decoded = False
            continue
        rows += table.num_rows
        for name, index in columns.items():
            values = table.column(name)
            if values.null_count:
                problems.append(f"nulls: {values.null_count} in {name} (row group {g}, decoded)")
            stats = metadata.row_group(g).column(index).statistics
            if stats is None or not stats.has_min_max or values.null_count == len(values):
                continue
            low, high = (v.as_py() for v in pc.min_max(values).values())
            exact = low == stats.min and high == stats.max
            if not (exact if footer["exact_statistics"] else stats.min <= low and high <= stats.max):
                problems.append(f"row group {g}: the values of {name} do not match the footer's min/max statistics")
        lengths = pc.binary_length(table.column(TOKENS_COLUMN)).to_pylist()
        counts = table.column(COUNT_COLUMN).to_pylist()
        ids = table.column("segment_id").to_pylist() if "segment_id" in columns else [None] * table.num_rows
        for sid, n, c in zip(ids, lengths, counts, strict=True):
            if n is None or c is None:
                continue
            tokens += c
            if n % 2 or c != n // 2:
                mismatches += 1
                if len(mismatched) < MAX_LISTED:
                    mismatched.append(f"{sid} ({c} vs {n} bytes)")
    if mismatches:
        problems.append(
            f"token counts: {mismatches} rows with token_count != len(neucodec_tokens) // 2: {', '.join(mismatched)}"
        )
    if decoded:
        report = footer["report"]
        if rows != footer["rows"]:
            problems.append(f"rows: {rows} decoded, the footer says {footer['rows']}")
        if report is not None and report.get("tokens") != tokens:
            problems.append(
                f"token counts: the rows' token_count add up to {tokens}, the record says {report.get('tokens')}"
            )
    return problems


# ------------------------------------------------------------------------------------------------------- one file
class _Unreadable(Exception):
    """The file exists but is no parquet file with a footer: a bad shard."""


def _not_found(exc: BaseException) -> bool:
    """No such key (a bucket that does not exist is an error, not a missing token file)."""
    from botocore.exceptions import ClientError

    return any(
        isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")
        for e in (exc, exc.__cause__)
    )


def _s3_head(client: Any, url: str) -> tuple[int, bytes]:
    """(size, first 4 bytes) of an object in one ranged GET; ``Missing`` when there is no such object."""
    from botocore.exceptions import ClientError

    bucket, key = split_url(url)
    try:
        response = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-3")
    except ClientError as exc:
        if _not_found(exc):
            raise Missing(url) from None
        if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object has no byte 0
            return 0, b""
        raise
    head: bytes = response["Body"].read()
    total = str(response.get("ContentRange") or "").rpartition("/")[2]
    return (int(total) if total.isdigit() else len(head)), head


class _Counted:
    """An S3 client whose GETs are counted (requests, and bytes in their answers) for one token file."""

    def __init__(self, client: Any):
        self.client = client
        self.requests = self.bytes = 0

    def get_object(self, **kwargs: Any) -> Any:
        self.requests += 1
        response = self.client.get_object(**kwargs)
        self.bytes += int(response.get("ContentLength") or 0)
        return response


def _read(path: str, full: bool, client: Any, out: dict[str, Any]) -> tuple[Any, int, bytes, bytes | None]:
    """(FileMetaData, size, first 4 bytes, the whole file in full mode) of one token file. Raises ``Missing``, or
    ``_Unreadable`` for a file without a readable footer. Local bytes read: pyarrow's footer read (the last 64 KiB, or
    the footer when longer) and the first 4 bytes."""
    import pyarrow.parquet as pq

    from neucodec_workflow.commands.footers import read_footer_local, read_footer_s3
    from neucodec_workflow.storage.streams import read_bytes

    data: bytes | None = None
    if full:
        try:
            data = read_bytes(path, client) if is_s3(path) else Path(path).read_bytes()
        except FileNotFoundError:
            raise Missing(path) from None
        except Exception as exc:
            if _not_found(exc):
                raise Missing(path) from None
            raise
        size, head = len(data), data[:4]
        out["bytes_read"] = size
    elif is_s3(path):
        size, head = _s3_head(client, path)
    else:
        try:
            with open(path, "rb") as f:
                size, head = os.fstat(f.fileno()).st_size, f.read(4)
        except FileNotFoundError:
            raise Missing(path) from None
    out["size"] = size
    if size < 12:
        raise _Unreadable(f"{TRUNCATED}: {size} bytes")
    try:
        if data is not None:
            metadata = pq.ParquetFile(io.BytesIO(data)).metadata
        elif is_s3(path):
            metadata, _ = read_footer_s3(client, path, size)
        else:
            metadata = read_footer_local(path)
            out["bytes_read"] = len(head) + max(min(size, LOCAL_FOOTER_READ), int(metadata.serialized_size) + 8)
    except Exception as exc:
        if _not_found(exc):
            raise Missing(path) from None
        raise _Unreadable(f"{TRUNCATED}: its footer cannot be read ({type(exc).__name__}: {exc})") from None
    return metadata, size, head, data


def verify_file(shard: str, path: str, *, full: bool = False, client: Any = None) -> dict[str, Any]:
    """One shard's token file (a local path, or an ``s3://`` URL read with ``client``): the footer checks, and in
    ``full`` mode every row. Returns ``{shard, path, status, ok, problems, notes, record, rows, tokens, size,
    requests, bytes_read}``: ``status`` ok / bad / missing (not encoded yet) / error (could not be checked); ``ok``
    is None for a missing file (nothing to judge)."""
    out: dict[str, Any] = {"shard": shard, "path": path, "status": OK, "ok": True, "problems": [], "notes": []}
    out.update(record=None, codec=None, codec_id=None, rows=None, tokens=None, size=None, requests=0, bytes_read=0)
    counted = _Counted(client or S3Settings.from_env().client()) if is_s3(path) else None
    try:
        metadata, size, head, data = _read(path, full, counted, out)
        footer = check_footer(metadata, size, head)
        out["problems"] += footer["problems"]
        out["notes"] += footer["notes"]
        out.update(record=footer["record"], rows=footer["rows"], tokens=footer["tokens"])
        out.update(codec=footer["codec"], codec_id=footer["codec_id"])
        if data is not None:
            out["problems"] += check_rows(io.BytesIO(data), metadata, footer)
    except Missing:
        out.update(status=MISSING, ok=None)
    except _Unreadable as exc:
        out["problems"].append(str(exc))
    except Exception as exc:  # the store or the machine, not the file: not judged
        out.update(status=ERROR, ok=False)
        out["problems"].append(f"could not be checked: {type(exc).__name__}: {exc}")
    if counted is not None:
        out["requests"], out["bytes_read"] = counted.requests, counted.bytes
    if out["status"] == OK and out["problems"]:
        out.update(status=BAD, ok=False)
    return out


# ------------------------------------------------------------------------------------------------------ a corpus
def verify_shards(
    shards: list[str],
    paths: list[str],
    *,
    full: bool = False,
    client: Any = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every shard's token file (``paths``: local paths or s3:// URLs, in the order of ``shards``): the report of
    ``snakemake verify``: a summary (checked, ok, bad with their problems, missing, errors, requests, bytes) and each
    shard's result."""
    t0 = time.perf_counter()
    if client is None and any(is_s3(p) for p in paths):
        client = S3Settings.from_env().client()
    threads = threads or (FULL_THREADS if full else THREADS)
    with ThreadPoolExecutor(max(1, min(threads, len(shards) or 1))) as pool:
        results = list(
            pool.map(lambda sp: verify_file(sp[0], sp[1], full=full, client=client), zip(shards, paths, strict=True))
        )
    by = {status: [r for r in results if r["status"] == status] for status in (OK, BAD, MISSING, ERROR)}
    checked = len(by[OK]) + len(by[BAD])
    return {
        "mode": "full" if full else "footer",
        "shards": len(shards),
        "checked": checked,
        "codecs": codecs_of_results(results),
        "ok": len(by[OK]),
        "bad": {r["shard"]: r["problems"] for r in by[BAD]},
        "missing": [r["shard"] for r in by[MISSING]],
        "errors": {r["shard"]: r["problems"] for r in by[ERROR]},
        "notes": _common_notes(results),
        "requests": sum(r["requests"] for r in results),
        "requests_per_shard": sum(r["requests"] for r in results) / len(results) if results else 0.0,
        "bytes_read": sum(r["bytes_read"] for r in results),
        "seconds": time.perf_counter() - t0,
        "results": results,
    }


def codecs_of_results(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The codecs of the token files whose footer was read (``consistency.codec_counts``: each known codec with its
    shards and their names; ``unknown``: foreign files without provenance; ``mixed``: more than one known codec,
    which summarize refuses to make one dataset of)."""
    read = [r for r in results if r["record"] is not None]
    codecs: dict[str, dict[str, Any]] = {}
    for r in read:
        if r["codec"] is None:
            continue
        c = codecs.setdefault(r["codec"], {"codec": r["codec"], "codec_ids": set(), "shards": []})
        c["codec_ids"].add(str(r["codec_id"]))
        c["shards"].append(r["shard"])
    known = [
        {
            "codec": c["codec"],
            "label": codec_label(c["codec"], c["codec_ids"]),
            "shards": len(c["shards"]),
            "shard_names": sorted(c["shards"]),
        }
        for c in sorted(codecs.values(), key=lambda c: (-len(c["shards"]), c["codec"]))
    ]
    unknown = sum(1 for r in read if r["codec"] is None)
    return {"codecs": known, "unknown": unknown, "mixed": len(known) > 1}


def _common_notes(results: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many shards carry each note (the notes themselves are per shard)."""
    counts: dict[str, int] = {}
    for r in results:
        for note in r["notes"]:
            counts[note] = counts.get(note, 0) + 1
    return dict(sorted(counts.items()))


def failure(summary: dict[str, Any], where: str, listed: int = 20) -> str | None:
    """The error that fails ``snakemake verify``: the bad shards named (the first ``listed``) with their first
    problem, and the shards that could not be checked; None when there are neither."""

    def named(items: dict[str, list[str]]) -> str:
        text = "; ".join(f"{shard}: {problems[0]}" for shard, problems in list(items.items())[:listed])
        return text + (f"; ... and {len(items) - listed} more" if len(items) > listed else "")

    bad, errors = summary["bad"], summary["errors"]
    parts = []
    if bad:
        parts.append(f"{len(bad)} bad token file(s) of {summary['checked']} checked: {named(bad)}")
    if errors:
        parts.append(f"{len(errors)} token file(s) could not be checked: {named(errors)}")
    return ". ".join(parts) + f" (every problem: {where})" if parts else None


def codecs_line(codecs: dict[str, Any]) -> str:
    """The codecs found, for people: each with its shard count, the foreign files, and a warning for a mix."""
    parts = [f"{c['label']}: {c['shards']} shard(s)" for c in codecs["codecs"]]
    if codecs["unknown"]:
        parts.append(f"unknown (foreign token files, no provenance): {codecs['unknown']} shard(s)")
    line = "codecs: " + ("; ".join(parts) or "none read")
    if codecs["mixed"]:
        line += " -- MIXED: summarize refuses to make one dataset of tokens of different codecs"
    return line


def write_report(path: str, report: dict[str, Any], client: Any = None) -> None:
    """``verify.json``: a local file (atomically) or an S3 object (one PUT)."""
    if not is_s3(path):
        write_json(path, report)
        return
    bucket, key = split_url(path)
    client = client or S3Settings.from_env().client()
    body = (json.dumps(report, indent=2) + "\n").encode()
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def run(
    shards: list[str],
    paths: list[str],
    report_path: str,
    *,
    full: bool = False,
    note: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Check, write the report, then raise ``VerifyError`` naming the bad shards (if any)."""
    client = S3Settings.from_env().client() if any(is_s3(p) for p in [*paths, report_path]) else None
    summary = verify_shards(shards, paths, full=full, client=client)
    write_report(report_path, summary, client)
    note(
        f"verify ({summary['mode']}): {summary['checked']} token files checked, {summary['ok']} ok, "
        f"{len(summary['bad'])} bad, {len(summary['missing'])} missing (not encoded yet), {len(summary['errors'])} "
        f"not checked; {summary['requests']} requests, {summary['bytes_read']} bytes read; report: {report_path}"
    )
    note(codecs_line(summary["codecs"]))
    message = failure(summary, report_path)
    if message:
        raise VerifyError(message)
    return summary
