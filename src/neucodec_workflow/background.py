"""Reading in the background: the one place where the package overlaps reading with the work on what was read.

``Prefetched``: one thread pulls items from an iterable while the caller works on the ones before. It is used for
the encode engine's windows of clips (``engine/engine.py``: the next window decoded while this one encodes), the
read-ahead of an S3 object (``storage/streams.ReadAhead``: the next chunks downloaded while the tar is read) and the
files of the next shard in the derive job (``jobs``). At most ``depth`` items wait, ready, for the caller, and the
thread reads one more while they wait (``depth=0``: only the next item is read ahead); memory stays bounded however
long the source is. An exception in the source is raised in the caller's thread, where the item would have come; a
caller that stops early (``close``, or leaving the ``with`` block) stops the thread, which then closes the source.

``ordered_map``: ``map`` on several threads, results in input order, a bounded number in flight. It is a parallel
map rather than a prefetcher (N workers on N items at once, where ``Prefetched`` keeps one thread on a sequential
source): the shard's FLAC members are decoded on it (``shard/encode.py``), and one thread could not keep up.

Standard library only: ``storage/`` and ``dataset/``-side jobs import it without torch.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _End:
    """The source is exhausted."""


class _Raised:
    """The source raised ``error``: it is raised again in the caller's thread."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetched(Iterator[T], Generic[T]):
    """``items`` read on a background thread (started here), handed over in order as the caller iterates.

    ``depth``: items that may wait, read, for the caller; the thread reads one more while they wait. An exception of
    the source is raised by ``next`` once the items before it are taken; after it, or at the end, iteration stops.
    ``close(wait=True)`` (also on leaving a ``with`` block) stops the thread after the item it is reading and waits
    for it; ``wait=False`` returns at once (the thread ends by itself). The thread closes the source (a generator's
    ``close``) when it ends, so a source's cleanup runs on the thread that was reading it.
    """

    def __init__(self, items: Iterable[T], depth: int = 1, *, name: str = "prefetch"):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, not {depth}")
        self._source = iter(items)
        self._ready: queue.SimpleQueue[T | _End | _Raised] = queue.SimpleQueue()
        self._room = threading.Semaphore(depth + 1)  # one per item read and not yet taken (the one being read too)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self._room.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(self._source)
                except StopIteration:
                    self._ready.put(_End())
                    return
                self._ready.put(item)
        except BaseException as exc:  # handed to the caller's thread
            self._ready.put(_Raised(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._ready.get()
        if isinstance(item, _End):
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.error
        self._room.release()
        return item

    def close(self, wait: bool = True) -> None:
        """Stop reading: the thread ends after the item it is reading (if any); ``wait``: until it has ended."""
        self._finished = True
        if not self._stop.is_set():
            self._stop.set()
            self._room.release()  # a thread waiting for room wakes up and sees the stop
        if wait:
            self._thread.join()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most ``ahead`` in flight.

    FLAC decoding (libsndfile) and resampling (torch) release the GIL, so threads run in parallel;
    the bound keeps memory flat however long the tar is.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
