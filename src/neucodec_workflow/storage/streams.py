"""What jobs read from S3: ``audio.tar`` as a bounded read-ahead stream, small objects whole, local paths as they are."""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url

log = logging.getLogger(__name__)


class ReadAhead(io.RawIOBase):
    """A forward-only stream of one S3 object, filled by a background thread.

    At most ``depth`` chunks of ``chunk_size`` bytes are buffered (bounded memory, nothing on disk), so the download
    of the next members overlaps the encoding of the current ones. A broken connection is resumed with a byte-range
    GET up to ``resumes`` times.
    """

    def __init__(
        self, client: Any, bucket: str, key: str, *, chunk_size: int = 8 << 20, depth: int = 4, resumes: int = 5
    ):
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
                log.warning(
                    "s3://%s/%s: %s after %d bytes, resuming (%d/%d)",
                    self.bucket,
                    self.key,
                    type(exc).__name__,
                    offset,
                    attempts,
                    self.resumes,
                )

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
