"""S3-compatible storage (AWS S3, Cloudflare R2, MinIO, NAS endpoints): one listing per run, streaming reads.

Three things live here (design note: docs/s3.md):

* :class:`Inventory` lists every object under the workflow's S3 prefixes once (paginated, ~1 request per 1,000
  objects) and answers exists / mtime / size / is-directory from that snapshot. Shard discovery uses the same listing.
* :func:`install_plugin_patches` makes ``snakemake-storage-plugin-s3`` (0.3.6) answer its ``exists``, ``mtime``,
  ``size``, ``is_dir``, ``bucket_exists`` and ``inventory`` from the inventory for objects under those prefixes,
  keeps it current when the plugin writes (``store_object``: one HEAD/LIST after the upload) or deletes
  (``remove``, which also no longer deletes a bucket that became empty). Objects outside the prefixes keep the stock
  behaviour. Uploads and deletes themselves stay the plugin's.
* :func:`open_source` streams an ``s3://`` object for the encode job through a bounded read-ahead buffer (downloads
  overlap encoding; nothing is written to disk), with resumption by byte range after a network error.

Our own boto3 clients use the same checksum settings the plugin forces process-wide
(``request_checksum_calculation`` / ``response_checksum_validation`` = ``when_required``).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

#: The plugin/snakemake versions whose internals the patches below were written against and tested with.
TESTED_VERSIONS = {"snakemake": "9.27.1", "snakemake-storage-plugin-s3": "0.3.6"}
#: Settings of the plugin that also configure our own clients (``SNAKEMAKE_STORAGE_S3_<NAME>``).
SETTING_NAMES = ("endpoint_url", "region", "access_key", "secret_key", "token")
ENV_PREFIX = "SNAKEMAKE_STORAGE_S3_"
#: Set to 1 (the tests do) to make a missing endpoint an error instead of a fallback to AWS.
REQUIRE_ENDPOINT_ENV = "NEUCODEC_S3_REQUIRE_ENDPOINT"
#: Set to 1 to leave the plugin unpatched (to measure the stock behaviour in benchmarks/s3_requests.py).
STOCK_ENV = "NEUCODEC_S3_STOCK_PLUGIN"


class S3Error(RuntimeError):
    pass


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (no leading or trailing slash on the key)."""
    if not is_s3(url):
        raise S3Error(f"not an s3:// URL: {url}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise S3Error(f"no bucket in {url}")
    return bucket, key.strip("/")


@dataclass(frozen=True)
class S3Settings:
    """Endpoint, region and credentials, as the plugin sees them. Secrets never appear in ``repr``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> S3Settings:
        return cls(**{name: os.environ.get(ENV_PREFIX + name.upper()) or None for name in SETTING_NAMES})

    @classmethod
    def from_plugin(cls, settings: Any) -> S3Settings:
        """From the plugin's ``StorageProviderSettings`` (CLI ``--storage-s3-*``, profile or env vars)."""
        return cls(**{name: getattr(settings, name, None) or None for name in SETTING_NAMES})

    def export_to_env(self) -> None:
        """Make these settings visible to job processes (the encode/assemble scripts) without writing them anywhere."""
        for name in SETTING_NAMES:
            value = getattr(self, name)
            if value is not None:
                os.environ.setdefault(ENV_PREFIX + name.upper(), value)

    def client(self) -> Any:
        """A boto3 S3 client with the plugin's checksum settings and standard retries."""
        import boto3
        from botocore.config import Config

        if os.environ.get(REQUIRE_ENDPOINT_ENV) == "1" and not self.endpoint_url:
            raise S3Error(f"{REQUIRE_ENDPOINT_ENV}=1 but no endpoint is set ({ENV_PREFIX}ENDPOINT_URL): refusing to use AWS")
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 5, "mode": "standard"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region or "us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.token,
            config=config,
        )


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    mtime: float


class Inventory:
    """What exists under some ``s3://bucket/prefix`` roots: listed once, lazily, then kept current by our writes.

    Thread-safe. A key is *covered* when it lies under a root; only covered keys are answered from here.
    """

    def __init__(self, settings: S3Settings, roots: list[str]):
        self.settings = settings
        self.roots = sorted({split_url(r) for r in roots})
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], ObjectInfo] | None = None
        self._dirs: set[tuple[str, str]] = set()
        self._buckets: set[str] = set()
        self._client: Any = None
        self.requests = 0  # requests this inventory sent (listing pages, HEADs)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def covers(self, bucket: str, key: str) -> bool:
        return any(bucket == b and (not p or key == p or key.startswith(p + "/")) for b, p in self.roots)

    def _add(self, bucket: str, key: str, info: ObjectInfo) -> None:
        assert self._objects is not None
        self._objects[(bucket, key)] = info
        parts = key.split("/")
        for i in range(1, len(parts)):
            self._dirs.add((bucket, "/".join(parts[:i])))

    def _list(self, bucket: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
        for page in paginator.paginate(**kwargs):
            self.requests += 1
            for obj in page.get("Contents", []):
                yield obj["Key"], ObjectInfo(int(obj["Size"]), obj["LastModified"].timestamp())

    def load(self) -> None:
        """List every root (once per process); a missing bucket is an error."""
        with self._lock:
            if self._objects is not None:
                return
            self._objects = {}
            try:
                for bucket, prefix in self.roots:
                    for key, info in self._list(bucket, prefix):
                        self._add(bucket, key, info)
                    self._buckets.add(bucket)
            except Exception as exc:
                self._objects = None
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
                raise S3Error(f"cannot list s3://{bucket}/{prefix} at {self.settings.endpoint_url or 'AWS'}: {code}") from exc
            log.info("S3 inventory: %d objects under %s in %d requests", len(self._objects),
                     ", ".join(f"s3://{b}/{p}" for b, p in self.roots), self.requests)

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
            return (bucket, key) in self._dirs and any(b == bucket and k.startswith(key + "/") for b, k in self._objects or {})

    def info(self, bucket: str, key: str) -> ObjectInfo | None:
        with self._lock:
            return self._objs().get((bucket, key))

    def subobjects(self, bucket: str, key: str) -> list[ObjectInfo]:
        with self._lock:
            return [v for (b, k), v in self._objs().items() if b == bucket and k.startswith(key + "/")]

    def exists(self, bucket: str, key: str) -> bool:
        return self.info(bucket, key) is not None or self.is_dir(bucket, key)

    # Invalidation: called after the plugin wrote or deleted something.
    def refresh(self, bucket: str, key: str, directory: bool) -> None:
        """Re-read one object (HEAD) or one directory (LIST) after an upload."""
        with self._lock:
            objs = self._objs()
            self.forget(bucket, key)
            if directory:
                for k, info in self._list(bucket, key):
                    self._add(bucket, k, info)
                return
            self.requests += 1
            head = self.client.head_object(Bucket=bucket, Key=key)
            self._add(bucket, key, ObjectInfo(int(head["ContentLength"]), head["LastModified"].timestamp()))
            assert (bucket, key) in objs

    def forget(self, bucket: str, key: str) -> None:
        """Mark an object (and anything under it as a directory) as gone."""
        with self._lock:
            objs = self._objs()
            objs.pop((bucket, key), None)
            for k in [k for k in objs if k[0] == bucket and k[1].startswith(key + "/")]:
                del objs[k]


# ---------------------------------------------------------------------------------------------------------------
# The plugin patches
# ---------------------------------------------------------------------------------------------------------------

_ACTIVE: Inventory | None = None
_ORIGINAL: dict[str, Any] = {}
#: The methods of snakemake_storage_plugin_s3.StorageObject that are replaced (tests check they still exist).
PATCHED_METHODS = ("inventory", "exists", "mtime", "size", "is_dir", "bucket_exists", "store_object", "remove")


def active_inventory() -> Inventory | None:
    return _ACTIVE


def _covering(obj: Any) -> Inventory | None:
    inv = _ACTIVE
    if inv is not None and getattr(obj, "bucket", None) is not None and inv.covers(obj.bucket, obj.key):
        return inv
    return None


def _missing(obj: Any) -> FileNotFoundError:
    return FileNotFoundError(f"{obj.query} does not exist (per the S3 listing of this run)")


async def _inventory(self: Any, cache: Any) -> None:
    if _covering(self) is None:
        await _ORIGINAL["inventory"](self, cache)
    # covered: exists()/mtime()/size() below answer from the listing, nothing to pre-fill


def _exists(self: Any) -> bool:
    inv = _covering(self)
    return _ORIGINAL["exists"](self) if inv is None else inv.exists(self.bucket, self.key)


def _mtime(self: Any) -> float:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["mtime"](self)
    info = inv.info(self.bucket, self.key)
    if info is not None:
        return info.mtime
    sub = inv.subobjects(self.bucket, self.key)
    if not sub:
        raise _missing(self)
    return max(i.mtime for i in sub)


def _size(self: Any) -> int:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["size"](self)
    info = inv.info(self.bucket, self.key)
    if info is not None:
        return info.size
    sub = inv.subobjects(self.bucket, self.key)
    if not sub:
        raise _missing(self)
    return sum(i.size for i in sub)


def _is_dir(self: Any) -> bool:
    inv = _covering(self)
    if inv is None:
        return _ORIGINAL["is_dir"](self)
    if self._is_dir is None:
        self._is_dir = inv.info(self.bucket, self.key) is None and inv.is_dir(self.bucket, self.key)
    return bool(self._is_dir)


def _bucket_exists(self: Any) -> bool:
    inv = _covering(self)
    if inv is not None and inv.bucket_exists(self.bucket):
        return True  # listed it this run: no HEAD bucket (and no create_bucket attempt on upload)
    return _ORIGINAL["bucket_exists"](self)


def _store_object(self: Any) -> None:
    _ORIGINAL["store_object"](self)
    inv = _covering(self)
    if inv is not None:
        inv.refresh(self.bucket, self.key, directory=self.local_path().is_dir())


def _remove(self: Any) -> None:
    """The plugin's remove() minus its last step (delete the bucket when it became empty, one LIST per call)."""
    if self.is_dir():
        prefix = self.key + "/"
        for item in self.s3bucket().objects.filter(Prefix=prefix):
            item.delete()
    else:
        self.s3obj().delete()
    inv = _covering(self)
    if inv is not None:
        inv.forget(self.bucket, self.key)
    self._is_dir = None


_PATCHES = {
    "inventory": _inventory,
    "exists": _exists,
    "mtime": _mtime,
    "size": _size,
    "is_dir": _is_dir,
    "bucket_exists": _bucket_exists,
    "store_object": _store_object,
    "remove": _remove,
}


def installed_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in TESTED_VERSIONS}


def install_plugin_patches(inventory: Inventory) -> None:
    """Route the plugin's metadata queries under the inventory's roots through it (idempotent)."""
    global _ACTIVE
    from snakemake_storage_plugin_s3 import StorageObject

    missing = [m for m in PATCHED_METHODS if not callable(getattr(StorageObject, m, None))]
    if missing:
        raise S3Error(f"snakemake-storage-plugin-s3 {installed_versions()} lacks {missing}: the S3 patches need "
                      f"the tested versions {TESTED_VERSIONS} (see docs/s3.md)")
    if installed_versions() != TESTED_VERSIONS:
        log.warning("S3 patches were tested with %s, found %s: check docs/s3.md", TESTED_VERSIONS, installed_versions())
    if not _ORIGINAL:
        for name in PATCHED_METHODS:
            _ORIGINAL[name] = getattr(StorageObject, name)
            setattr(StorageObject, name, _PATCHES[name])
    _ACTIVE = inventory


def uninstall_plugin_patches() -> None:
    global _ACTIVE
    if _ORIGINAL:
        from snakemake_storage_plugin_s3 import StorageObject

        for name, fn in _ORIGINAL.items():
            setattr(StorageObject, name, fn)
        _ORIGINAL.clear()
    _ACTIVE = None


def activate(plugin_settings: Any, roots: list[str]) -> Inventory:
    """For the Snakefile: one inventory over ``roots`` (the S3 corpus/output), patches on, settings exported."""
    settings = S3Settings.from_plugin(plugin_settings)
    settings.export_to_env()
    inv = _ACTIVE if _ACTIVE is not None and sorted({split_url(r) for r in roots}) == _ACTIVE.roots else Inventory(settings, roots)
    if os.environ.get(STOCK_ENV) == "1":
        log.warning("%s=1: the S3 storage plugin runs unpatched (one request per question; benchmarks only)", STOCK_ENV)
        return inv
    install_plugin_patches(inv)
    return inv


# ---------------------------------------------------------------------------------------------------------------
# Streaming reads for the jobs
# ---------------------------------------------------------------------------------------------------------------


class ReadAhead(io.RawIOBase):
    """A forward-only stream of one S3 object, filled by a background thread.

    At most ``depth`` chunks of ``chunk_size`` bytes are buffered (bounded memory, nothing on disk), so the download
    of the next members overlaps the encoding of the current ones. A broken connection is resumed with a byte-range
    GET up to ``resumes`` times.
    """

    def __init__(self, client: Any, bucket: str, key: str, *, chunk_size: int = 8 << 20, depth: int = 4, resumes: int = 5):
        super().__init__()
        self.client, self.bucket, self.key = client, bucket, key
        self.chunk_size, self.resumes = chunk_size, resumes
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._buffer = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name=f"s3-read-ahead {key}", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        offset, attempts = 0, 0
        while not self._stop.is_set():
            try:
                kwargs = {"Range": f"bytes={offset}-"} if offset else {}
                body = self.client.get_object(Bucket=self.bucket, Key=self.key, **kwargs)["Body"]
                while not self._stop.is_set():
                    chunk = body.read(self.chunk_size)
                    if not chunk:
                        self._put(None)
                        return
                    offset += len(chunk)
                    self._put(chunk)
                return
            except Exception as exc:  # network errors mid-stream: resume from the last byte we have
                attempts += 1
                if attempts > self.resumes or getattr(exc, "response", None) is not None:
                    self._put(exc)
                    return
                log.warning("s3://%s/%s: %s after %d bytes, resuming (%d/%d)", self.bucket, self.key, type(exc).__name__, offset, attempts, self.resumes)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer and not self._done:
            item = self._queue.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buffer = memoryview(item)
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        super().close()


def read_bytes(url: str, client: Any = None) -> bytes:
    """The whole object (metadata and tokens parquet files: small, random access needed)."""
    bucket, key = split_url(url)
    client = client or S3Settings.from_env().client()
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


@contextmanager
def open_source(path: str, *, seekable: bool = False) -> Iterator[str | BinaryIO]:
    """A local path unchanged, or an ``s3://`` URL as a stream (``seekable``: read fully into memory)."""
    if not is_s3(path):
        yield path
        return
    client = S3Settings.from_env().client()
    if seekable:
        yield io.BytesIO(read_bytes(path, client))
        return
    bucket, key = split_url(path)
    stream = io.BufferedReader(ReadAhead(client, bucket, key), buffer_size=1 << 20)
    try:
        yield stream
    finally:
        stream.close()


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path unchanged, or an ``s3://`` object downloaded to a temporary file (removed afterwards)."""
    if not is_s3(path):
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="neucodec-s3-") as tmp:
        local = os.path.join(tmp, split_url(path)[1].rsplit("/", 1)[-1])
        with open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local


class OneAtATime:
    """``reader(url_or_path)`` for the SFT assembly: local paths unchanged; an S3 object fetched into memory
    (one shard's file at a time, nothing kept after the caller drops it)."""

    def __init__(self) -> None:
        self._client: Any = None

    def __call__(self, path: str) -> str | BinaryIO:
        if not is_s3(path):
            return path
        if self._client is None:
            self._client = S3Settings.from_env().client()
        return io.BytesIO(read_bytes(path, self._client))
