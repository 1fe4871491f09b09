"""What jobs read from S3: ``audio.tar`` as a bounded read-ahead stream, small objects whole, local paths as they are.

Every read goes through ``iter_object``: botocore retries each request (``s3.retry_config``: throttling, 5xx,
connection errors, with backoff and jitter), and a body that breaks while it is read, which botocore does not retry,
is resumed here with a byte-range GET of the rest (``If-Match`` the first answer's ETag, so a changed object is an
error, never a splice), after a jittered exponential backoff. An error that stays names the object."""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from neucodec_workflow.background import Prefetched
from neucodec_workflow.storage.s3 import S3Error, S3Settings, is_s3, split_url

log = logging.getLogger(__name__)

#: Attempts of one read while no byte arrives (the first try included); every byte received resets the count, so a
#: long stream survives any number of breaks as long as it makes progress.
READ_ATTEMPTS_ENV = "NEUCODEC_S3_READ_ATTEMPTS"
DEFAULT_READ_ATTEMPTS = 6
BACKOFF_BASE, BACKOFF_CAP = 0.2, 20.0  # seconds: full jitter, uniform(0, min(cap, base * 2**(attempt - 1)))
THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}

#: Retries made by ``iter_object`` in this process, by cause (tests and reports read it).
retries: Counter[str] = Counter()
_retries_lock = threading.Lock()


class ShortRead(OSError):
    """A body that ended before its Content-Length without an error of its own."""


def read_attempts() -> int:
    raw = os.environ.get(READ_ATTEMPTS_ENV) or str(DEFAULT_READ_ATTEMPTS)
    if not raw.isdigit() or int(raw) < 1:
        raise S3Error(f"{READ_ATTEMPTS_ENV}={raw!r}: expected a whole number >= 1")
    return int(raw)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): exponential, full jitter."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def _status(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")), int(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    )


def retryable(exc: BaseException) -> bool:
    """Throttling, server errors and broken connections or bodies; not 4xx answers (missing key, access denied,
    a changed object) or configuration errors."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(exc, ClientError):
        code, status = _status(exc)
        return status >= 500 or status in (408, 429) or code in THROTTLING
    return isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError | OSError) or (
        type(exc).__module__.startswith("urllib3")
    )


def describe(exc: BaseException) -> str:
    code, status = _status(exc)
    if code == "PreconditionFailed" or status == 412:
        return "the object changed while it was being read (ETag differs); run again"
    return f"{code} (HTTP {status})" if code else f"{type(exc).__name__}: {exc}"


def iter_object(
    client: Any,
    bucket: str,
    key: str,
    *,
    chunk_size: int = 8 << 20,
    attempts: int | None = None,
    stop: threading.Event | None = None,
    seen: dict[str, Any] | None = None,
) -> Iterator[bytes]:
    """The object's bytes in order, in chunks of at most ``chunk_size``; a broken body is resumed by byte range.

    ``attempts``: tries while no byte arrives (default ``NEUCODEC_S3_READ_ATTEMPTS``, 6), on top of botocore's own
    retries of each GET. Raises ``S3Error`` naming ``s3://bucket/key`` when a read cannot be completed. ``seen``:
    given the first answer's ``LastModified`` (a datetime)."""
    attempts = attempts or read_attempts()
    url = f"s3://{bucket}/{key}"
    offset, failures, etag, total = 0, 0, None, None
    while total is None or offset < total:
        body = None
        try:
            kwargs: dict[str, str] = {}
            if offset:
                kwargs["Range"] = f"bytes={offset}-"
                if etag:
                    kwargs["IfMatch"] = etag
            response = client.get_object(Bucket=bucket, Key=key, **kwargs)
            etag = etag or response.get("ETag")
            if seen is not None:
                seen.setdefault("LastModified", response.get("LastModified"))
            if response.get("ContentLength") is not None:
                total = offset + int(response["ContentLength"])
            body = response["Body"]
            while True:
                if stop is not None and stop.is_set():
                    return
                chunk = body.read(chunk_size)
                if not chunk:
                    break
                offset += len(chunk)
                failures = 0
                yield chunk
            if total is not None and offset < total:
                raise ShortRead(f"the body ended at byte {offset} of {total}")
            return
        except Exception as exc:
            failures += 1
            if not retryable(exc):
                raise S3Error(f"{url}: {describe(exc)}") from exc
            where = f"byte {offset}" + (f" of {total}" if total is not None else "")
            if failures >= attempts:
                raise S3Error(
                    f"{url}: read failed {failures} times in a row at {where}, giving up: {describe(exc)}"
                ) from exc
            delay = backoff(failures)
            with _retries_lock:
                retries[type(exc).__name__] += 1
            log.warning(
                "%s: %s at %s; retrying in %.2f s (%d/%d)", url, describe(exc), where, delay, failures, attempts - 1
            )
            if stop is not None:
                if stop.wait(delay):
                    return
            else:
                time.sleep(delay)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # a broken connection may fail to close; it is dropped either way
                    pass


class ReadAhead(io.RawIOBase):
    """A forward-only stream of one S3 object, filled by a background thread (``background.Prefetched``).

    At most ``depth`` chunks of ``chunk_size`` bytes wait, downloaded, and one more is being read (bounded memory,
    nothing on disk), so the download of the next members overlaps the encoding of the current ones. A broken
    connection is resumed with a byte-range GET (``iter_object``; ``attempts`` while no byte arrives). An error that
    stays is raised by ``read``, in the reader's thread; ``close`` returns at once, the download stops by itself.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        chunk_size: int = 8 << 20,
        depth: int = 4,
        attempts: int | None = None,
    ):
        super().__init__()
        self.client, self.bucket, self.key = client, bucket, key
        self.chunk_size, self.attempts = chunk_size, attempts
        self._buffer = memoryview(b"")
        self._stop = threading.Event()  # seen by iter_object between chunks and while it waits to retry
        chunks = iter_object(client, bucket, key, chunk_size=chunk_size, attempts=attempts, stop=self._stop)
        self._chunks = Prefetched(chunks, depth, name=f"s3-read-ahead {key}")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)  # an S3Error naming the object is raised here, in the reader's thread
            if chunk is None:  # the end (or after an error): EOF
                return 0
            self._buffer = memoryview(chunk)
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._chunks.close(wait=False)
        super().close()


def read_bytes(url: str, client: Any = None, seen: dict[str, Any] | None = None) -> bytes:
    """The whole object (metadata and tokens parquet files: small, random access needed), resumed by byte range
    when its body breaks (``iter_object``; ``seen``: given its ``LastModified``)."""
    bucket, key = split_url(url)
    client = client or S3Settings.from_env().client()
    return b"".join(iter_object(client, bucket, key, seen=seen))


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
        self._modified: dict[str, float] = {}  # s3:// URL read -> its LastModified, until mtime() asks for it

    def _s3(self) -> Any:
        if self._client is None:
            self._client = S3Settings.from_env().client()
        return self._client

    def __call__(self, path: str) -> str | BinaryIO:
        if not is_s3(path):
            return path
        seen: dict[str, Any] = {}
        data = read_bytes(path, self._s3(), seen)
        if seen.get("LastModified") is not None:
            self._modified[path] = seen["LastModified"].timestamp()
        return io.BytesIO(data)

    def mtime(self, path: str) -> float:
        """A local file's modification time, or an S3 object's LastModified (seconds since the epoch): the one its
        read here answered (no request), else one HEAD (an object read from its local copy)."""
        if not is_s3(path):
            return os.stat(path).st_mtime
        if path in self._modified:
            return self._modified.pop(path)
        bucket, key = split_url(path)
        try:
            modified = self._s3().head_object(Bucket=bucket, Key=key)["LastModified"]
        except Exception as exc:
            raise S3Error(f"{path}: {describe(exc)}") from exc
        return float(modified.timestamp())
