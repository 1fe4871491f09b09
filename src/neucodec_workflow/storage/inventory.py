"""One listing of the workflow's S3 prefixes per run: exists / mtime / size / is-directory from that snapshot.

Shard discovery and the storage plugin's patches (``plugin``) answer from it: a dry-run over 5,000 shards costs a
handful of LIST requests instead of several requests per object.

Objects written after the listing become known in three ways: uploads by this process (``refresh``), receipts of the
jobs this process ran (``receipts``), and, once the run executes jobs (``go_live``), one HEAD for a key the listing
lacks. The last is how the main process sees what a cluster job on another node uploaded: Snakemake checks a job's
outputs in the store when the job has finished, and a key found is remembered (a key not found is asked again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neucodec_workflow.storage.s3 import S3Error, S3Settings, split_url, timestamp
from neucodec_workflow.storage.uploads import read_receipts

log = logging.getLogger(__name__)


#: How long a HEAD that found nothing is believed (live inventory): far less than any job takes
ABSENT_SECONDS = 2.0


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    mtime: float


class Inventory:
    """What exists under some ``s3://bucket/prefix`` roots: listed once, lazily, then kept current by our writes.

    Thread-safe. A key is *covered* when it lies under a root; only covered keys are answered from here.
    """

    def __init__(self, settings: S3Settings, roots: list[str], listed: list[str] | None = None):
        self.settings = settings
        self.roots = sorted({split_url(r) for r in roots})
        # what load() lists: the roots, or part of them (a job's shards; the rest is looked up when live)
        self.listed = self.roots if listed is None else sorted({split_url(r) for r in listed})
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], ObjectInfo] | None = None
        self._dirs: set[tuple[str, str]] = set()
        self._buckets: set[str] = set()
        self._client: Any = None
        self._lister: Any = None
        self.requests = 0  # requests this inventory sent (listing pages, HEADs)
        # uploads.Uploader receipts: objects this run's jobs sent themselves, read when a key is not known
        self.receipts: Path | None = None
        self._receipts_read: set[str] = set()
        self._receipts_mtime = 0
        self.live = False  # go_live(): a key the listing lacks gets a HEAD
        self._expected: set[tuple[str, str]] | None = None  # go_live(expected): only these keys
        self._absent: dict[tuple[str, str], float] = {}  # key -> when a HEAD last found nothing

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    @property
    def lister(self) -> Any:
        """The listing's own client, which keeps the server's timestamp strings (``timestamp()`` reads them):
        botocore's dateutil parse of each key's LastModified was a quarter of a 15,000-key listing. ``client``,
        which other code also uses, parses them as usual."""
        if self._lister is None:
            self._lister = self.settings.client(raw_timestamps=True)
        return self._lister

    def covers(self, bucket: str, key: str) -> bool:
        return any(bucket == b and (not p or key == p or key.startswith(p + "/")) for b, p in self.roots)

    def _add(self, bucket: str, key: str, info: ObjectInfo) -> None:
        assert self._objects is not None
        self._objects[(bucket, key)] = info
        parts = key.split("/")
        for i in range(1, len(parts)):
            self._dirs.add((bucket, "/".join(parts[:i])))

    def _list(self, bucket: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        paginator = self.lister.get_paginator("list_objects_v2")
        kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
        for page in paginator.paginate(**kwargs):
            self.requests += 1
            for obj in page.get("Contents", []):
                yield obj["Key"], ObjectInfo(int(obj["Size"]), timestamp(obj["LastModified"]))

    def load(self) -> None:
        """List every root (once per process); a missing bucket is an error."""
        with self._lock:
            if self._objects is not None:
                return
            self._objects = {}
            try:
                for bucket, prefix in self.listed:
                    for key, info in self._list(bucket, prefix):
                        self._add(bucket, key, info)
                    self._buckets.add(bucket)
            except Exception as exc:
                self._objects = None
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
                raise S3Error(
                    f"cannot list s3://{bucket}/{prefix} at {self.settings.endpoint_url or 'AWS'}: {code}"
                ) from exc
            log.info(
                "S3 inventory: %d objects under %s in %d requests",
                len(self._objects),
                ", ".join(f"s3://{b}/{p}" for b, p in self.listed),
                self.requests,
            )

    def _objs(self) -> dict[tuple[str, str], ObjectInfo]:
        self.load()
        assert self._objects is not None
        return self._objects

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every listed key under ``prefix/`` (sorted)."""
        with self._lock:
            start = f"{prefix}/" if prefix else ""
            return sorted(k for b, k in self._objs() if b == bucket and k.startswith(start))

    def bucket_exists(self, bucket: str) -> bool:
        with self._lock:
            self._objs()
            return bucket in self._buckets

    def is_dir(self, bucket: str, key: str) -> bool:
        with self._lock:
            self._objs()
            return (bucket, key) in self._dirs and any(
                b == bucket and k.startswith(key + "/") for b, k in self._objects or {}
            )

    def go_live(self, expected: list[str] | None = None) -> None:
        """From now on (jobs run, elsewhere too) a covered key the listing, our uploads and the receipts lack is
        looked up with one HEAD; found, it is remembered; not found, the answer holds for ``ABSENT_SECONDS``
        (Snakemake asks twice in a row before it starts a job). ``expected``: only these s3:// URLs (the outputs of
        jobs that run elsewhere; everything else this process writes, or its jobs leave receipts). Not in a
        dry-run: planning answers from the listing."""
        self.live = True
        self._expected = None if expected is None else {split_url(u) for u in expected}

    def info(self, bucket: str, key: str) -> ObjectInfo | None:
        with self._lock:
            found = self._objs().get((bucket, key))
            if found is None and self._read_receipts():
                found = self._objs().get((bucket, key))
            if found is None and self.live and self.covers(bucket, key):
                if self._expected is None or (bucket, key) in self._expected:
                    absent = self._absent.get((bucket, key))
                    if absent is None or time.monotonic() - absent > ABSENT_SECONDS:
                        found = self._head(bucket, key)
            return found

    def _head(self, bucket: str, key: str) -> ObjectInfo | None:
        """HEAD one object; found, it is added (its listing-equivalent size and time)."""
        self.requests += 1
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                self._absent[(bucket, key)] = time.monotonic()
                return None
            raise S3Error(f"s3://{bucket}/{key}: cannot look it up: {code or type(exc).__name__}") from exc
        info = ObjectInfo(int(head["ContentLength"]), timestamp(head["LastModified"]))
        self._add(bucket, key, info)
        return info

    def _read_receipts(self) -> bool:
        """Add the uploads of receipts not read yet (a receipt appears whole, by rename); True when something was
        added. The folder is scanned when its mtime changed since the last scan, or is under a second old (a
        directory's mtime is as coarse as the kernel's clock tick: two receipts in one tick leave one mtime)."""
        if self.receipts is None:
            return False
        try:
            mtime = self.receipts.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._receipts_mtime and time.time_ns() - mtime > 1_000_000_000:
            return False
        self._receipts_mtime = mtime
        uploads = read_receipts(self.receipts, self._receipts_read)
        for u in uploads:
            if self.covers(u["bucket"], u["key"]):
                self._add(u["bucket"], u["key"], ObjectInfo(int(u["size"]), float(u["mtime"])))
        return bool(uploads)

    def subobjects(self, bucket: str, key: str) -> list[ObjectInfo]:
        with self._lock:
            return [v for (b, k), v in self._objs().items() if b == bucket and k.startswith(key + "/")]

    def exists(self, bucket: str, key: str) -> bool:
        return self.info(bucket, key) is not None or self.is_dir(bucket, key)

    # Invalidation: called after the plugin wrote or deleted something.
    def refresh(self, bucket: str, key: str, directory: bool, size: int) -> None:
        """After an upload: a directory is listed again (LIST); a file is recorded with its local size and this
        machine's clock as its mtime, without a HEAD. Within the run, the uploads are compared with each other;
        the next run lists the store's own times."""
        with self._lock:
            self.forget(bucket, key)
            if directory:
                for k, info in self._list(bucket, key):
                    self._add(bucket, k, info)
                return
            self._add(bucket, key, ObjectInfo(size, time.time()))

    def forget(self, bucket: str, key: str) -> None:
        """Mark an object (and anything under it as a directory) as gone."""
        with self._lock:
            objs = self._objs()
            objs.pop((bucket, key), None)
            for k in [k for k in objs if k[0] == bucket and k[1].startswith(key + "/")]:
                del objs[k]
