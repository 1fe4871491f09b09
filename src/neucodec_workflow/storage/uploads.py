"""Outputs a job sends to S3 itself, one at a time: the reports and dataset parts of the derive jobs.

Snakemake uploads a job's outputs when the job ends, so a job that writes many files would hold them all on local
disk until then (a derive batch of 100 shards: 100 shards' parts), and it keeps an output that a later job reads until
that job is done (the reports, until summarize, at the end of the run). The reports and parts are declared
``retrieve=False`` outputs instead: Snakemake neither uploads nor downloads them, and checks after the job that they
exist in the store. The job writes each file at the plugin's local path for it (atomically: a hidden temporary name,
then a rename), uploads it and removes it, so one file at a time is on local disk; summarize reads the reports
through the derive jobs' digests (``digests``).

Snakemake's check after the job asks the plugin, whose answers come from the run's ``Inventory`` (one listing per
run). So the job leaves a receipt, ``{receipts}/{uuid}.json`` (bucket, key, size and time of each upload), written
also when the job fails (what it did send), and the inventory reads the receipts when asked about a key it has not
seen: the check costs no request (a HEAD per part would be one request per part more).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from neucodec_workflow.storage.s3 import S3Error, S3Settings, split_url
from neucodec_workflow.storage.streams import describe

log = logging.getLogger(__name__)

MULTIPART_BYTES = 8 * 1024 * 1024  # boto3's default multipart threshold: smaller files go in one PUT
#: Bytes from which a file is sent as a multipart upload (default 8 MiB; parts of at least 8 MiB, the last smaller)
MULTIPART_ENV = "NEUCODEC_S3_MULTIPART_BYTES"


def multipart_bytes() -> int:
    """The multipart threshold: ``NEUCODEC_S3_MULTIPART_BYTES`` (a whole number of bytes), else 8 MiB."""
    raw = os.environ.get(MULTIPART_ENV) or str(MULTIPART_BYTES)
    if not raw.isdigit() or int(raw) < 1:
        raise S3Error(f"{MULTIPART_ENV}={raw!r}: expected a whole number of bytes >= 1")
    return int(raw)


class Uploader:
    """``send(staging, url)``: upload a finished local file to ``url`` and remove it. Used as a context manager;
    the receipt is written on exit (``receipts``: the folder; None: no receipt)."""

    def __init__(self, receipts: str | Path | None) -> None:
        self.receipts = Path(receipts) if receipts else None
        self.sent: list[dict[str, Any]] = []
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = S3Settings.from_env().client()
        return self._client

    def send(self, staging: str | Path, url: str) -> str | None:
        """Upload ``staging`` to ``url``, remove it; the object's ETag (None for a multipart upload)."""
        staging = Path(staging)
        bucket, key = split_url(url)
        size = staging.stat().st_size
        etag = None
        threshold = multipart_bytes()
        try:  # one PUT (a multipart upload from the threshold on); botocore retries throttling and 5xx
            if size < threshold:
                etag = self.client.put_object(Bucket=bucket, Key=key, Body=staging.read_bytes())["ETag"]
            else:  # the object appears whole when the upload completes; a failed one is aborted by s3transfer
                from boto3.s3.transfer import TransferConfig

                config = TransferConfig(
                    multipart_threshold=threshold, multipart_chunksize=max(threshold, MULTIPART_BYTES)
                )
                self.client.upload_file(str(staging), bucket, key, Config=config)
        except Exception as exc:
            raise S3Error(f"cannot upload {url}: {describe(exc)}") from exc
        self.sent.append({"bucket": bucket, "key": key, "size": size, "mtime": time.time()})
        staging.unlink()
        return etag

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.receipts is None or not self.sent:
            return
        from neucodec_workflow.record.contract import write_json

        try:
            write_json(self.receipts / f"{uuid.uuid4().hex}.json", {"uploads": self.sent})
        except OSError as err:  # the parts are in the store; Snakemake's check after the job will say which it misses
            log.error("could not write the upload receipt in %s: %s", self.receipts, err)


def read_receipts(directory: Path, seen: set[str]) -> list[dict[str, Any]]:
    """The uploads recorded in receipts of ``directory`` not in ``seen`` (file names, updated)."""
    found: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name in seen or not entry.name.endswith(".json"):
                continue
            try:
                found += json.loads(Path(entry.path).read_text())["uploads"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring the unreadable upload receipt %s: %s", entry.path, exc)
            seen.add(entry.name)
    return found


def publish(written: dict[str, str], receipts: str | Path | None) -> None:
    """A job's finished outputs, ``{destination: where it was written}``: each one bound for S3 is sent once and
    removed (sent or not: nothing stays on a cluster node's disk); a local destination was written in place. The
    uploads are recorded in ``receipts``."""
    from neucodec_workflow.storage.s3 import is_s3

    bound = {url: local for url, local in written.items() if is_s3(url)}
    try:
        with Uploader(receipts) as uploader:
            for url, local in bound.items():
                size = Path(local).stat().st_size
                uploader.send(local, url)
                log.info("sent %s (%d bytes)", url, size)
    finally:
        for local in bound.values():
            Path(local).unlink(missing_ok=True)


def abort_abandoned_uploads(client: Any, roots: list[tuple[str, str]], ours: Any) -> list[str]:
    """Abort the multipart uploads left open under ``roots`` ((bucket, prefix) pairs) whose URL ``ours(url)`` says
    this workflow writes: run by the main process before its first job, when no upload of this run has begun, so
    every open one is from a job that was killed while it sent (SIGKILL, scancel, a lost node). One listing request
    per root (per 1,000 open uploads); the keys aborted."""
    aborted = []
    for bucket, prefix in roots:
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    url = f"s3://{bucket}/{upload['Key']}"
                    if ours(url):
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted.append(url)
        except Exception as exc:  # a store without the call, or keys without the right: the run goes on
            log.warning(
                "cannot look for unfinished uploads under s3://%s/%s (%s): a killed job's parts may stay billed "
                "until the bucket's lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                bucket,
                prefix,
                describe(exc),
            )
    return aborted
