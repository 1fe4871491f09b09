"""The checks of ``snakemake verify`` (``commands/verify.py`` reads the files and reports): ``check_footer``, every
check one token file's footer allows, against the contract (``contract.SCHEMA``) and against the record that travels
inside it (the encode job's report, ``REPORT_KEY``); in full mode ``check_rows``, every row decoded.

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
  thrift is read, by ``parquet_thrift``): it must be even, half of it must be the record's ``tokens``, and, since every row's
  ``token_count == len(bytes) // 2``, it must lie between ``rows * min(token_count)`` and ``rows * max(token_count)``
  (the column statistics); the record's ``tokens`` must lie there too.

What full mode adds, and what neither mode can tell: ``commands/verify.py``.
"""

from __future__ import annotations

import json
from typing import Any

from neucodec_workflow.commands.parquet_thrift import byte_regions, raw_footer, value_bytes
from neucodec_workflow.dataset.codecs import codec_identity
from neucodec_workflow.record.contract import PROVENANCE_KEY, REPORT_KEY, records_of

MAGIC = b"PAR1"
MAX_LISTED = 5  # ids named in a problem (the count says how many there are)
# the contract's columns at the parquet level: physical type and the logical types that mean the contract's type
COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segment_id": ("BYTE_ARRAY", ("String",)),
    "neucodec_tokens": ("BYTE_ARRAY", ("None",)),
    "token_count": ("INT32", ("None", "Int(bitWidth=32, isSigned=true)")),
}
TOKENS_COLUMN, COUNT_COLUMN = "neucodec_tokens", "token_count"
TRUNCATED = "truncated or not parquet"


class _Check:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []


def _check_layout(check: _Check, metadata: Any, raw: dict[int, Any], size: int, strict: bool) -> None:
    footer_start = size - 8 - int(metadata.serialized_size)
    regions, complete = byte_regions(raw)
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
    counts = _check_row_groups(check, metadata, columns)
    footer_tokens = _footer_tokens(check, raw, columns, rows)
    if footer_tokens is not None and counts is not None:
        low, high = rows * counts[0], rows * counts[1]
        if not low <= footer_tokens <= high:
            check.problems.append(
                f"token counts: the rows hold {footer_tokens} tokens, but {rows} rows of {counts[0]}-{counts[1]} "
                f"(token_count's min/max) hold {low}-{high}"
            )
    _check_record(check, metadata, kind, report, rows, footer_tokens, counts)
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


def _check_row_groups(check: _Check, metadata: Any, columns: dict[str, int]) -> tuple[int, int] | None:
    """Rows and nulls, row group by row group; returns token_count's (min, max) over the row groups that hold rows,
    from their statistics (None when one lacks them)."""
    rows = int(metadata.num_rows)
    groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
    if sum(int(g.num_rows) for g in groups) != rows:
        check.problems.append(
            f"rows: the footer says {rows}, its row groups hold {sum(int(g.num_rows) for g in groups)}"
        )
    nulls_unknown: set[str] = set()
    ranges: list[tuple[int, int] | None] = []  # token_count's (min, max) of each row group with rows
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
                ranges.append((int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max else None)
    if nulls_unknown:
        check.notes.append(f"no null counts in the footer for {', '.join(sorted(nulls_unknown))}: nulls not checked")
    found = [r for r in ranges if r is not None]
    if found and min(low for low, _ in found) < 0:
        check.problems.append(f"token counts: a token_count of {min(low for low, _ in found)}")
    if found and len(found) == len(ranges):
        return min(low for low, _ in found), max(high for _, high in found)
    if COUNT_COLUMN in columns and rows:
        check.notes.append("no min/max statistics of token_count: token counts not bounded")
    return None


def _footer_tokens(check: _Check, raw: dict[int, Any], columns: dict[str, int], rows: int) -> int | None:
    """The tokens the rows hold, from the total length of the token bytes (the column chunks' size statistics);
    None when the footer has no size statistics of them."""
    if TOKENS_COLUMN not in columns:
        return None
    sizes = value_bytes(raw, TOKENS_COLUMN)
    if not sizes or any(s is None for s in sizes):
        if rows:
            check.notes.append("no size statistics in the footer: the total of the token bytes is not known")
        return None
    token_bytes = sum(s for s in sizes if s is not None)
    if token_bytes % 2:
        check.problems.append(f"token counts: {token_bytes} bytes of tokens, not whole uint16 tokens")
    return token_bytes // 2


def _check_record(
    check: _Check,
    metadata: Any,
    kind: str,
    report: dict[str, Any] | None,
    rows: int,
    footer_tokens: int | None,
    counts: tuple[int, int] | None,
) -> None:
    """The footer against the record it carries (the encode job's report): rows, tokens, segments."""
    if report is None:
        if kind == "foreign":
            check.notes.append("foreign token file (no record): rows and tokens not compared with a record")
        elif REPORT_KEY not in (metadata.metadata or {}):
            check.notes.append("no report in the file (written before reports travelled inside it): rows not compared")
        return
    encoded, tokens = report.get("encoded"), report.get("tokens")
    if encoded != rows:
        check.problems.append(f"rows: the file has {rows}, the record says {encoded} encoded")
    if footer_tokens is not None and tokens != footer_tokens:
        check.problems.append(f"token counts: the rows hold {footer_tokens} tokens, the record says {tokens}")
    if isinstance(tokens, int) and counts is not None and not rows * counts[0] <= tokens <= rows * counts[1]:
        check.problems.append(
            f"token counts: the record's {tokens} tokens cannot be {rows} rows of {counts[0]}-{counts[1]} tokens"
        )
    rejected = report.get("rejected_count")
    if isinstance(rejected, int) and isinstance(encoded, int) and report.get("segments") != encoded + rejected:
        check.problems.append(f"record: {report.get('segments')} segments but {encoded} encoded + {rejected} rejected")


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
