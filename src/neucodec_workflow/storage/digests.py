"""Report digests: summarize reads every shard report of an S3 output with a request per derive job, not per shard.

With an S3 output the derive jobs upload each shard's report themselves (``uploads``: no local copy stays behind),
then one digest, ``{output}/.report_digests/{uuid}.json.gz``: for each report its key, the ETag the store gave it
and its text. summarize lists the reports (their current ETags) and the digests, takes a report's text from a
digest entry whose ETag is the report's current one, and GETs the others (reports written before digests existed,
or changed since by anything else). When it had to GET a report, or read more than ``KEEP`` digests, it writes one
digest of every report and deletes the digests it read: later runs read that one plus those of their own derive
jobs. A digest that is lost or stale costs requests, never a wrong report (an ETag changes with the object).

Requests for adopting 5,000 shards (50 derive batches): 50 PUTs, then 5 LIST pages of reports, 1 of digests, 50
GETs, 1 PUT and 1 DELETE, instead of a GET per report (which would take adoption over 5 requests per shard).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from neucodec_workflow.storage.s3 import S3Error, split_url
from neucodec_workflow.storage.streams import describe

log = logging.getLogger(__name__)

FOLDER = ".report_digests"  # under the output root, beside shards/
THREADS = 8  # boto3 keeps 10 connections per client
KEEP = 20  # digests read before summarize compacts them into one (each incremental run adds one)


def folder(output: str) -> str:
    """Where an output's digests live: ``{output}/.report_digests``."""
    return f"{output.rstrip('/')}/{FOLDER}"


def entry(url: str, etag: str, text: str) -> dict[str, str]:
    """One report of a digest: its key, the ETag the store gave it, its text."""
    return {"key": split_url(url)[1], "etag": _bare(etag), "text": text}


def write(client: Any, digests: str, entries: list[dict[str, str]]) -> str:
    """Put one digest of ``entries`` under ``digests`` (an s3:// folder); its key."""
    bucket, prefix = split_url(digests)
    key = f"{prefix}/{uuid.uuid4().hex}.json.gz"
    body = gzip.compress(json.dumps({"reports": entries}, separators=(",", ":")).encode(), mtime=0)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    except Exception as exc:
        raise S3Error(f"cannot write the report digest s3://{bucket}/{key}: {describe(exc)}") from exc
    return key


@dataclass
class Reading:
    """What ``read_reports`` found: each report's text (in the order asked), and how."""

    texts: list[str]
    digests_read: int = 0
    from_digests: int = 0
    fetched: int = 0
    compacted: bool = False
    requests: int = 0


def read_reports(client: Any, urls: list[str], digests: str, on_read: Callable[[int], object] | None = None) -> Reading:
    """The text of each report in ``urls`` (s3:// URLs in one bucket), from the digests under ``digests`` where they
    are current, else by GET; then the digests are compacted when that saves later runs requests. ``on_read(n)``:
    n more reports read (progress)."""
    on_read = on_read or (lambda n: None)
    keys = [split_url(u)[1] for u in urls]
    bucket = split_url(urls[0])[0] if urls else ""
    if any(split_url(u)[0] != bucket for u in urls):
        raise S3Error("the shard reports are not all in one bucket")
    listed, pages = _list(client, bucket, os.path.commonprefix(keys).rpartition("/")[0]) if urls else ({}, 0)
    digest_bucket, digest_prefix = split_url(digests)
    digest_keys, digest_pages = _list(client, digest_bucket, digest_prefix)
    requests = pages + digest_pages

    current: dict[str, dict[str, str]] = {}  # key -> a digest entry whose ETag is the report's current one
    with ThreadPoolExecutor(THREADS) as pool:
        for entries in pool.map(lambda key: _get_digest(client, digest_bucket, key), sorted(digest_keys)):
            for e in entries:
                if listed.get(e["key"]) == e["etag"]:
                    current[e["key"]] = e
    requests += len(digest_keys)

    missing = [k for k in keys if k not in current]
    on_read(len(keys) - len(missing))

    def fetch(key: str) -> tuple[str, str]:
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            return got["Body"].read().decode(), got["ETag"]
        except Exception as exc:
            raise S3Error(f"cannot read the shard report s3://{bucket}/{key}: {describe(exc)}") from exc

    with ThreadPoolExecutor(THREADS) as pool:
        for key, (text, etag) in zip(missing, pool.map(fetch, missing), strict=True):
            current[key] = {"key": key, "etag": _bare(etag), "text": text}
            on_read(1)
    requests += len(missing)

    reading = Reading(
        [current[k]["text"] for k in keys],
        digests_read=len(digest_keys),
        from_digests=len(keys) - len(missing),
        fetched=len(missing),
    )
    if len(digest_keys) > KEEP or missing:
        write(client, digests, sorted(current.values(), key=lambda e: e["key"]))
        requests += 1 + _delete(client, digest_bucket, sorted(digest_keys))
        reading.compacted = True
    reading.requests = requests
    return reading


def _bare(etag: str) -> str:
    return etag.strip('"')


def _list(client: Any, bucket: str, prefix: str) -> tuple[dict[str, str], int]:
    """key -> ETag of every object under ``prefix/``; the number of LIST requests."""
    found: dict[str, str] = {}
    pages = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
        ):
            pages += 1
            for obj in page.get("Contents", []):
                found[obj["Key"]] = _bare(obj["ETag"])
    except Exception as exc:
        raise S3Error(f"cannot list s3://{bucket}/{prefix}: {describe(exc)}") from exc
    return found, pages


def _get_digest(client: Any, bucket: str, key: str) -> list[dict[str, str]]:
    """A digest's entries; an unreadable digest is skipped (its reports are then read one by one)."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return list(json.loads(gzip.decompress(body))["reports"])
    except Exception as exc:  # a digest is an optimisation: a damaged or vanished one costs requests only
        log.warning("ignoring the report digest s3://%s/%s: %s", bucket, key, describe(exc))
        return []


def _delete(client: Any, bucket: str, keys: list[str]) -> int:
    """Delete ``keys`` (1,000 a request); the number of requests. A failure is logged: a digest left behind is read
    again next time, harmlessly."""
    requests = 0
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        requests += 1
        try:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
        except Exception as exc:
            log.warning("could not delete %d old report digests under s3://%s: %s", len(chunk), bucket, describe(exc))
    return requests
