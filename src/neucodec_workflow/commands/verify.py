"""``snakemake verify``: find corrupt token files without re-encoding, from their parquet footers.

For each shard's ``neucodec_tokens.parquet`` (a local path or an ``s3://`` URL) only the ends of the file are read:
its first 4 bytes and its footer (S3: a ranged GET of bytes 0-3, which also gives the object's size, and the footer
reader of ``status``: one ranged GET of the last 64 KiB, a second one only for a footer longer than that; local: the
same bytes, through pyarrow's metadata read). So a check costs 2 requests per shard in S3 (3 for a footer over
64 KiB), 1 for a missing token file, and nothing is downloaded. The footer is checked against the contract
(``contract.SCHEMA``) and against the record that travels inside it (the encode job's report, ``REPORT_KEY``): is it
readable, its layout, its schema, its rows, nulls and token counts (``commands/verify_checks.py`` lists them and what
each catches; the footer's size statistics and page-index offsets through ``commands/parquet_thrift.py``).

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

from neucodec_workflow.commands.verify_checks import TRUNCATED, check_footer, check_rows
from neucodec_workflow.dataset.codecs import codec_label
from neucodec_workflow.record.contract import write_json
from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url

log = logging.getLogger(__name__)

THREADS = 10  # footer reads at a time (botocore keeps 10 connections per client)
FULL_THREADS = 4  # whole files in memory at a time in full mode
LOCAL_FOOTER_READ = 64 << 10  # pyarrow reads this much of a file's end for its footer (more for a longer footer)

OK, BAD, MISSING, ERROR = "ok", "bad", "missing", "error"


class Missing(Exception):
    """The token file does not exist: the shard is not encoded yet."""


class VerifyError(RuntimeError):
    """Some token files are bad (or could not be checked): raised after the report is written."""


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
    """The codecs of the token files whose footer was read (``codecs.codec_counts``: each known codec with its
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


def verify_job(*, shards: list[str], tokens: list[str], report: str, full: bool) -> None:
    """Rule verify: every shard's token file checked from its footer (``full``: every row too), the report written to
    ``report`` (a path or an s3:// URL), then ``VerifyError`` naming the bad shards, if any."""
    run(shards, tokens, report, full=full)
