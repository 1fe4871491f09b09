"""The token files' footers as status and verify read them: the corpus listed once (``Listing``), each footer read
with one ranged GET (or from a local file) and summed up, summaries cached between looks (``FooterCache``) or taken
from summarize's ``shards.parquet`` when its row is about the same file (``read_summary``)."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neucodec_workflow.dataset.codecs import codec_identity
from neucodec_workflow.dataset.derive import FOREIGN, WITHOUT_REPORT, WORKFLOW
from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import METADATA, SECONDS_PER_TOKEN, TAR, TOKENS, records_of, write_text
from neucodec_workflow.storage.discovery import shard_list
from neucodec_workflow.storage.inventory import Inventory, ObjectInfo
from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url
from neucodec_workflow.storage.streams import describe

CACHE = ".snakemake/neucodec_workflow/status_footers.json"
CACHE_VERSION = 2  # 2: summaries carry the codec
SUMMARY = layout.SHARD_TABLE  # summarize's table in the output: one row per shard
# what a row must hold to stand for a token file's footer (stats.SHARD_COLUMNS; older tables lack some: not used)
SUMMARY_COLUMNS = (
    "shard",
    "record",
    "segments",
    "encoded",
    "rejects_by_reason",
    "audio_seconds",
    "token_file_rows",
    "token_file_bytes",
    "token_file_mtime",
    "wall_seconds",
    "device",
    "host",
    "random_weights",
    "codec",
    "codec_id",
    "audit_segments",
    "audit_tokens",
    "audit_matching_tokens",
    "audit_token_agreement",
)
FOOTER_TAIL = 64 << 10  # one ranged GET of the last 64 KiB holds a footer with a report of ~1,000 rejects
FOOTER_THREADS = 10  # botocore's default connection pool: more threads would open and drop connections
NOTE_FOOTERS = 500  # from this many footers to read, say so on stderr first
RECORD_KINDS = (WORKFLOW, FOREIGN, WITHOUT_REPORT)


# -------------------------------------------------------------------------------------------------------- listing
@dataclass
class Listing:
    """The corpus as listed once: the shards and, per shard, its tar, metadata and token file (None when missing)."""

    corpus: str
    shards: list[str]
    files: dict[str, dict[str, ObjectInfo | None]]
    requests: int = 0  # S3 requests of the listing
    inventory: Inventory | None = None

    def size(self, shard: str, name: str) -> int:
        info = self.files[shard][name]
        return info.size if info is not None else 0

    def mtime(self, shard: str, name: str) -> float | None:
        info = self.files[shard][name]
        return info.mtime if info is not None else None


def list_corpus(config: dict[str, Any], directory: Path = Path("."), settings: S3Settings | None = None) -> Listing:
    """The shard list of the workflow (``discovery.shard_list``) and what exists of each shard's files: a directory
    walk and ``os.stat``, or one paginated listing of an ``s3://`` corpus (``Inventory``). Relative paths are
    relative to the workflow's working ``directory``, as in Snakemake."""

    def here(path: str) -> str:
        return path if not path or is_s3(path) else os.path.abspath(directory / path)

    corpus = here(config["corpus"].rstrip("/"))
    shards_file = here(config["shards_file"])
    names = (TAR, METADATA, TOKENS)
    if is_s3(corpus):
        inventory = Inventory(settings or S3Settings.from_env(), [corpus])
        shards = shard_list(corpus, config["shards"], shards_file, inventory=inventory)
        bucket, prefix = split_url(corpus)
        base = f"{prefix}/" if prefix else ""
        files = {s: {n: inventory.info(bucket, f"{base}{s}/{n}") for n in names} for s in shards}
        return Listing(corpus, shards, files, inventory.requests, inventory)

    def stat(path: str) -> ObjectInfo | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return ObjectInfo(st.st_size, st.st_mtime)

    shards = shard_list(corpus, config["shards"], shards_file)
    return Listing(corpus, shards, {s: {n: stat(f"{corpus}/{s}/{n}") for n in names} for s in shards})


# -------------------------------------------------------------------------------------------------------- footers
def read_footer_s3(client: Any, url: str, size: int) -> tuple[Any, int]:
    """The token file's parquet footer through ranged GETs: the last 64 KiB (one request), and when the footer is
    longer, exactly the footer (a second one). Returns (``FileMetaData``, requests)."""
    import pyarrow.parquet as pq

    bucket, key = split_url(url)

    def tail(n: int) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{n}")["Body"].read()
        return body

    data, requests = tail(min(FOOTER_TAIL, size)), 1
    if len(data) < 12 or data[-4:] != b"PAR1":
        raise ValueError(f"{url} is not a parquet file (no PAR1 at its end)")
    length = int.from_bytes(data[-8:-4], "little") + 8
    if length > len(data):
        data, requests = tail(length), 2
    # the footer behind a 4-byte magic is a parquet file whose metadata pyarrow reads (its column chunks, never)
    return pq.ParquetFile(io.BytesIO(b"PAR1" + data[-length:])).metadata, requests


def read_footer_local(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata


def summarize(metadata: Any) -> dict[str, Any]:
    """What status needs from one token file's footer (small enough to cache 5,000 of): the record's kind, the codec
    (``consistency.codec_identity``; None: foreign) and its id, audio seconds, wall seconds, device, rejects by
    reason, audit. For a token file without a report (foreign), the audio is estimated from the size of its
    ``neucodec_tokens`` column (``estimated``)."""
    provenance, report = records_of(metadata.metadata or {})
    return {**_footer_summary(metadata, provenance, report), **_codec(provenance)}


def _codec(provenance: dict[str, Any]) -> dict[str, Any]:
    return {"codec": codec_identity(provenance), "codec_id": provenance.get("codec_id")}


def _footer_summary(metadata: Any, provenance: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    rows = int(metadata.num_rows)
    if report is not None:
        audit = report.get("audit")
        return {
            "record": WORKFLOW,
            "rows": rows,
            "audio_seconds": float(report.get("audio_seconds") or 0.0),
            "wall_seconds": float(report.get("wall_seconds") or 0.0),
            "device": report.get("device") or "unknown",
            "host": report.get("host") or "unknown",
            "encoded": int(report.get("encoded") or 0),
            "segments": int(report.get("segments") or 0),
            "rejects_by_reason": dict(report.get("rejects_by_reason") or {}),
            "audit": {k: audit[k] for k in ("segments", "tokens", "matching_tokens", "token_agreement")}
            if audit
            else None,
            "random_weights": bool(provenance.get("random_weights")),
            "estimated": False,
        }
    blob = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema == "neucodec_tokens":
                blob += column.total_uncompressed_size
    # plain byte arrays: a 4-byte length and 2 bytes per token (page headers and dictionary indices: noise)
    tokens = max(0, blob - 4 * rows) // 2
    return _without_report(
        WITHOUT_REPORT if provenance else FOREIGN,
        rows,
        tokens * SECONDS_PER_TOKEN,
        bool(provenance.get("random_weights")),
        estimated=True,
    )


def _without_report(record: str, rows: int, audio: float, random_weights: bool, estimated: bool) -> dict[str, Any]:
    """The summary of a token file without an encode report (foreign, or written before reports travelled inside):
    every row counts as an encoded segment; no speed, device, rejects or audit."""
    return {
        "record": record,
        "rows": rows,
        "audio_seconds": audio,
        "wall_seconds": 0.0,
        "device": "",
        "encoded": rows,
        "segments": rows,
        "rejects_by_reason": {},
        "audit": None,
        "random_weights": random_weights,
        "estimated": estimated,
    }


def summary_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The footer summary (``summarize``) that a shard's row of shards.parquet stands for: its derived report's
    numbers, which for a token file of this workflow are its encode report's. For a foreign token file (or one
    without a report) the row's audio is exact (the report counts the tokens): not ``estimated``."""
    return {**_row_summary(row), "codec": row["codec"], "codec_id": row["codec_id"]}


def _row_summary(row: dict[str, Any]) -> dict[str, Any]:
    rows = int(row["token_file_rows"])
    audio = float(row["audio_seconds"] or 0.0)
    random_weights = bool(row["random_weights"])
    if row["record"] == WORKFLOW:
        audit = None
        if row["audit_segments"] is not None:
            audit = {
                "segments": row["audit_segments"],
                "tokens": row["audit_tokens"],
                "matching_tokens": row["audit_matching_tokens"],
                "token_agreement": row["audit_token_agreement"],
            }
        return {
            "record": WORKFLOW,
            "rows": rows,
            "audio_seconds": audio,
            "wall_seconds": float(row["wall_seconds"] or 0.0),
            "device": row["device"] or "unknown",
            "host": row["host"] or "unknown",
            "encoded": int(row["encoded"] or 0),
            "segments": int(row["segments"] or 0),
            "rejects_by_reason": dict(row["rejects_by_reason"] or ()),
            "audit": audit,
            "random_weights": random_weights,
            "estimated": False,
        }
    return _without_report(row["record"], rows, audio, random_weights, estimated=False)


def same_file(row: dict[str, Any], info: ObjectInfo, whole_seconds: bool) -> bool:
    """Whether a shard's row of shards.parquet is about the token file listed now: same size and the modification
    time its derive job saw (S3: to the second, the resolution of the ``LastModified`` a GET or HEAD answers)."""
    mtime = row.get("token_file_mtime")
    if mtime is None or row.get("token_file_rows") is None or row.get("token_file_bytes") != info.size:
        return False
    if row.get("record") not in RECORD_KINDS:
        return False
    return math.floor(mtime) == math.floor(info.mtime) if whole_seconds else mtime == info.mtime


@dataclass
class SummaryRows:
    """What one look took from ``{output}/shards.parquet``: its rows by shard (None: none to take), the S3 requests
    it cost, and why (``read``, ``unchanged``: its rows were taken by an earlier look, ``absent``, ``unusable: ...``)."""

    rows: dict[str, dict[str, Any]] | None
    requests: int
    state: str


def _table_rows(source: str | io.BytesIO) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(source, columns=list(SUMMARY_COLUMNS))
    return {r["shard"]: r for r in table.to_pylist()}


def read_summary(
    config: dict[str, Any], directory: Path, listing: Listing, cache: FooterCache, settings: S3Settings | None = None
) -> SummaryRows:
    """The rows of ``{output}/shards.parquet`` by shard, unless it is missing or unchanged since a look took its rows
    (``cache.table``: those that matched a token file are in the cache; the others match no better now). A local
    output: ``os.stat`` and a read. In S3: inside the corpus listing, its size and time come from there and a GET
    reads it when changed; elsewhere (a sibling prefix, another bucket), one GET, conditional on the ETag seen last
    (unchanged: 'not modified', no body)."""
    output = config["output"].rstrip("/")
    output = output if is_s3(output) else os.path.abspath(directory / output)
    url = f"{output}/{SUMMARY}"
    seen = cache.table if cache.table is not None and cache.table.get("url") == url else None

    def take(source: str | io.BytesIO, ident: dict[str, Any], requests: int) -> SummaryRows:
        cache.seen_table(ident)  # also when unusable: an unchanged table is not fetched again
        try:
            return SummaryRows(_table_rows(source), requests, "read")
        except Exception as exc:  # a table of an older workflow (no token_file_mtime) or a broken one: footers
            return SummaryRows(None, requests, f"unusable: {type(exc).__name__}: {exc}")

    if not is_s3(url):
        try:
            st = os.stat(url)
        except OSError:
            return SummaryRows(None, 0, "absent")
        ident = {"url": url, "size": st.st_size, "mtime": st.st_mtime}
        if seen is not None and {k: seen.get(k) for k in ident} == ident:
            return SummaryRows(None, 0, "unchanged")
        return take(url, ident, 0)

    bucket, key = split_url(url)
    inventory = listing.inventory
    kwargs: dict[str, str] = {}
    listed: ObjectInfo | None = None
    if inventory is not None and inventory.covers(bucket, key):
        listed = inventory.info(bucket, key)
        if listed is None:
            return SummaryRows(None, 0, "absent")
        if seen is not None and (seen.get("size"), seen.get("mtime")) == (listed.size, listed.mtime):
            return SummaryRows(None, 0, "unchanged")
    elif seen is not None and seen.get("etag"):
        kwargs["IfNoneMatch"] = seen["etag"]
    try:  # a local corpus with an S3 output: the client from the environment, as for the listing
        client = inventory.client if inventory is not None else (settings or S3Settings.from_env()).client()
        answer = client.get_object(Bucket=bucket, Key=key, **kwargs)
        body = answer["Body"].read()
    except Exception as exc:
        response = getattr(exc, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 304:
            return SummaryRows(None, 1, "unchanged")
        if status == 404:
            return SummaryRows(None, 1, "absent")
        return SummaryRows(None, 1, f"unusable: {describe(exc)}")
    ident = {
        "url": url,
        "size": listed.size if listed is not None else int(answer.get("ContentLength") or len(body)),
        "mtime": listed.mtime if listed is not None else answer["LastModified"].timestamp(),
        "etag": answer.get("ETag"),
    }
    return take(io.BytesIO(body), ident, 1)


class FooterCache:
    """Footer summaries by token file, valid while the file's size and modification time are unchanged; and which
    shards.parquet a look took rows from last (``table``: url, size, mtime, etag)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.table: dict[str, Any] | None = None
        self.changed = False
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = data["entries"]
                    self.table = data.get("table")
            except (OSError, ValueError, KeyError):
                self.entries, self.table = {}, None  # a broken cache is a cold one

    def get(self, key: str, info: ObjectInfo) -> dict[str, Any] | None:
        e = self.entries.get(key)
        if e is not None and e["size"] == info.size and e["mtime"] == info.mtime:
            return dict(e["summary"])
        return None

    def put(self, key: str, info: ObjectInfo, summary: dict[str, Any]) -> None:
        self.entries[key] = {"size": info.size, "mtime": info.mtime, "summary": summary}
        self.changed = True

    def seen_table(self, ident: dict[str, Any]) -> None:
        self.table = ident
        self.changed = True

    def save(self, keep: set[str]) -> None:
        gone = set(self.entries) - keep
        for k in gone:
            del self.entries[k]
        if self.path is not None and (self.changed or gone):
            data = {"version": CACHE_VERSION, "entries": self.entries, "table": self.table}
            write_text(self.path, json.dumps(data, separators=(",", ":")))
        self.changed = False


@dataclass
class Footers:
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard -> summary
    unreadable: dict[str, str] = field(default_factory=dict)  # shard -> error
    read: int = 0
    cached: int = 0
    requests: int = 0
    from_summary: int = 0  # summaries taken from shards.parquet's rows instead of the footers
    summary_requests: int = 0  # S3 requests for shards.parquet
    summary: str = "not needed"  # SummaryRows.state, when the cache did not hold every summary


def read_footers(
    listing: Listing,
    shards: list[str],
    cache: FooterCache,
    threads: int = FOOTER_THREADS,
    note: Callable[[str], None] | None = None,
    summary: Callable[[], SummaryRows] | None = None,
) -> Footers:
    """The footer summary of each of ``shards``' token files: from the cache, else from the token file's row of
    shards.parquet (``summary``, asked only when the cache misses some) when the row is about the same file, else
    read (in ``threads`` threads); ``note`` is told first when there are many to read."""
    out = Footers()
    todo: list[tuple[str, str, ObjectInfo]] = []
    for s in shards:
        info = listing.files[s][TOKENS]
        assert info is not None
        key = f"{listing.corpus}/{s}/{TOKENS}"
        hit = cache.get(key, info)
        if hit is not None:
            out.summaries[s] = hit
            out.cached += 1
        else:
            todo.append((s, key, info))
    if todo and summary is not None:
        table = summary()
        out.summary_requests, out.summary = table.requests, table.state
        if table.rows:
            whole_seconds = listing.inventory is not None  # S3: GET and HEAD answer times to the second
            left = []
            for s, key, info in todo:
                row = table.rows.get(s)
                if row is not None and same_file(row, info, whole_seconds):
                    out.summaries[s] = summary_of_row(row)
                    out.from_summary += 1
                    cache.put(key, info, out.summaries[s])
                else:
                    left.append((s, key, info))
            todo = left
    if note is not None and len(todo) >= NOTE_FOOTERS:
        note(f"reading the footers of {len(todo)} token files (kept in {CACHE} for the next look)")
    client = listing.inventory.client if listing.inventory is not None and todo else None

    def read(item: tuple[str, str, ObjectInfo]) -> tuple[str, str, ObjectInfo, Any, int]:
        s, key, info = item
        try:
            if client is not None:
                meta, n = read_footer_s3(client, key, info.size)
                return s, key, info, summarize(meta), n
            return s, key, info, summarize(read_footer_local(key)), 0
        except Exception as exc:  # one unreadable token file is reported, never the end of the status
            return s, key, info, f"{type(exc).__name__}: {exc}", 1 if client is not None else 0

    with ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
        for s, key, info, got, n in pool.map(read, todo):
            out.requests += n
            if isinstance(got, str):
                out.unreadable[s] = got
                continue
            out.summaries[s] = got
            out.read += 1
            cache.put(key, info, got)
    return out
