"""Reading in the background (neucodec_workflow/background.py): ``Prefetched`` keeps order, bounds what it reads
ahead, hands the source's exception to the caller, and stops (closing the source) when the caller stops early;
``ordered_map`` keeps order with several workers."""

import threading
import time
from collections.abc import Iterator

import pytest

from neucodec_workflow.background import Prefetched, ordered_map


class Source:
    """Items 0..n-1, counting how many were read; ``fail_at``: raise there; ``gate``: wait for it before each read."""

    def __init__(self, n: int, fail_at: int | None = None, gate: threading.Semaphore | None = None):
        self.n, self.fail_at, self.gate = n, fail_at, gate
        self.read = self.waited = 0
        self.closed = False
        self.thread: str | None = None

    def items(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                if self.gate is not None:
                    self.waited += 1
                    self.gate.acquire()
                self.thread = threading.current_thread().name
                if i == self.fail_at:
                    raise OSError(f"broken at item {i}")
                self.read += 1
                yield i
        finally:
            self.closed = True


def settle(condition: object, seconds: float = 5.0) -> None:
    """Wait until ``condition()`` holds (a thread's progress)."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_items_come_in_order_from_a_thread_of_their_own() -> None:
    source = Source(200)
    with Prefetched(source.items(), depth=3, name="test-prefetch") as items:
        assert list(items) == list(range(200))
    assert source.thread == "test-prefetch" and source.closed


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_at_most_depth_items_wait_and_one_more_is_read(depth: int) -> None:
    """``depth`` items wait, ready, and the thread reads one more: then it waits until the caller takes one."""
    source = Source(20)
    with Prefetched(source.items(), depth=depth) as items:
        settle(lambda: source.read == depth + 1)
        time.sleep(0.05)
        assert source.read == depth + 1  # no further
        assert next(items) == 0
        settle(lambda: source.read == depth + 2)  # taking one makes room for one
        time.sleep(0.05)
        assert source.read == depth + 2
        assert list(items) == list(range(1, 20))


def test_an_exception_in_the_source_reaches_the_caller_after_the_items_before_it() -> None:
    source = Source(10, fail_at=3)
    items = Prefetched(source.items(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(OSError, match="broken at item 3"):
        next(items)
    assert list(items) == []  # after the error: the end, not a wait
    items.close()
    assert source.closed


def test_an_exception_raised_at_once_is_raised_at_the_first_next() -> None:
    with Prefetched(Source(5, fail_at=0).items()) as items, pytest.raises(OSError, match="broken at item 0"):
        next(items)


def test_stopping_early_ends_the_thread_and_closes_the_source() -> None:
    """The caller takes two items and leaves: the thread, waiting for room, ends; the source is closed."""
    source = Source(1000)
    with Prefetched(source.items(), depth=2) as items:
        assert [next(items), next(items)] == [0, 1]
        settle(lambda: source.read == 5)
    assert not items._thread.is_alive() and source.closed
    assert source.read == 5  # nothing more was read
    assert list(items) == []


def test_stopping_while_an_item_is_read_waits_for_it_or_not() -> None:
    """``close()`` waits for the item being read, then the thread ends; ``close(wait=False)`` returns at once and
    the thread ends by itself once the item is read."""
    for wait in (True, False):
        gate = threading.Semaphore(1)
        source = Source(10, gate=gate)
        items = Prefetched(source.items(), depth=1)
        assert next(items) == 0
        settle(lambda: source.waited == 2)  # noqa: B023 (the thread waits at the gate, reading item 1)
        if wait:
            threading.Timer(0.1, gate.release).start()  # the item being read takes 0.1 s
            items.close()
            assert not items._thread.is_alive()
        else:
            items.close(wait=False)
            assert items._thread.is_alive()  # still reading
            gate.release()
            items._thread.join(5)
            assert not items._thread.is_alive()
        assert source.closed and source.read == 2
        with pytest.raises(StopIteration):
            next(items)


def test_a_caller_generator_dropped_midway_stops_the_thread() -> None:
    """As the engine uses it: a generator over ``with Prefetched(...)`` that its caller closes early."""
    source = Source(1000)

    def windows() -> Iterator[int]:
        with Prefetched(source.items(), depth=1) as items:
            yield from items

    gen = windows()
    assert next(gen) == 0
    gen.close()
    assert source.closed and source.read <= 3


def test_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetched(iter([]), depth=-1)


@pytest.mark.parametrize("workers", [1, 3])
def test_ordered_map_keeps_input_order(workers: int) -> None:
    def slow_square(i: int) -> int:
        time.sleep(0.002 * (i % 5))  # later items often finish first
        return i * i

    assert list(ordered_map(slow_square, range(40), workers, ahead=6)) == [i * i for i in range(40)]


def test_ordered_map_raises_the_workers_exception_in_order() -> None:
    def fn(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    out: list[int] = []
    with pytest.raises(ValueError, match="item 5"):
        for x in ordered_map(fn, range(10), 3, ahead=4):
            out.append(x)
    assert out == [0, 1, 2, 3, 4]
