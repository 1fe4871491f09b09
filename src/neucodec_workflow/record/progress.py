"""Progress of a long step (one shard's encode job) at a steady cadence, without touching its loop.

A daemon thread asks the step for a ``Tick`` (segments done, total known so far, audio seconds) and writes one log
line every ``NEUCODEC_PROGRESS_SECONDS`` (default 30 s): the job log of a 90-minute shard shows where it is. When
stderr is a terminal, a tqdm bar shows the same on the terminal instead (the log file keeps its lines).
``NEUCODEC_PROGRESS_BAR=0`` turns the bar off. Cost: one tick per cadence, nothing in the step's own loop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from neucodec_workflow.record.layout import PROGRESS, PROGRESS_LOGGER

log = logging.getLogger(PROGRESS_LOGGER)

SECONDS_ENV = "NEUCODEC_PROGRESS_SECONDS"
BAR_ENV = "NEUCODEC_PROGRESS_BAR"
DEFAULT_SECONDS = 30.0
BAR_SECONDS = 0.5  # refresh of the terminal bar


@dataclass(frozen=True)
class Tick:
    done: int  # segments settled (encoded or rejected)
    total: int  # segments known so far (grows while a streamed tar is read)
    audio_seconds: float = 0.0  # audio encoded so far
    unit: str = "segments"  # what done and total count (the dataset steps: shards)


def cadence(seconds: float | None = None) -> float:
    """Seconds between log lines: ``seconds``, else ``$NEUCODEC_PROGRESS_SECONDS``, else 30."""
    if seconds is not None:
        return float(seconds)
    raw = os.environ.get(SECONDS_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number: using %g s", SECONDS_ENV, raw, DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return value if value > 0 else DEFAULT_SECONDS


def duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def line(label: str, tick: Tick, elapsed: float) -> str:
    """``shard en/shard-0: 120/480 segments, 1534.2 s audio, 41.3x real time, 36.9 s elapsed, ETA 1m51s``."""
    rate = tick.audio_seconds / elapsed if elapsed > 0 else 0.0
    eta = (tick.total - tick.done) * elapsed / tick.done if tick.done and tick.total >= tick.done else None
    return (
        f"{label}: {tick.done}/{tick.total} {tick.unit}, {tick.audio_seconds:.1f} s audio, {rate:.1f}x real time, "
        f"{elapsed:.1f} s elapsed, ETA {duration(eta)}"
    )


class _NotProgress(logging.Filter):
    """On the terminal's handler while the bar is shown: progress lines go to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "progress", False)


def _terminal_handlers() -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and getattr(getattr(h, "stream", None), "isatty", lambda: False)()
    ]


class Progress:
    """``with Progress("shard en/shard-0", snapshot): ...``: a log line every ``seconds`` (and one at the end) from
    ``snapshot()``, plus a tqdm bar when stderr is a terminal (``bar``: force it on or off)."""

    def __init__(
        self,
        label: str,
        snapshot: Callable[[], Tick],
        *,
        seconds: float | None = None,
        bar: bool | None = None,
        logger: logging.Logger = log,
    ):
        self.label, self.snapshot, self.logger = label, snapshot, logger
        self.seconds = cadence(seconds)
        if bar is None:
            bar = os.environ.get(BAR_ENV, "") != "0" and sys.stderr.isatty()
        self.use_bar = bar
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress {label}", daemon=True)
        self._start = time.monotonic()
        self._bar: Any = None
        self._filter = _NotProgress()
        self._filtered: list[logging.Handler] = []
        self._redirect: Any = None

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.use_bar:
            from tqdm import tqdm  # type: ignore[import-untyped]
            from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

            self._redirect = logging_redirect_tqdm()  # other log lines print above the bar, not through it
            self._redirect.__enter__()
            self._filtered = _terminal_handlers()  # tqdm's handler in place of the terminal's
            for h in self._filtered:
                h.addFilter(self._filter)
            self._bar = tqdm(total=0, desc=self.label, unit="seg", file=sys.stderr, dynamic_ncols=True, leave=True)
        self._thread.start()
        return self

    def _safe_tick(self) -> Tick | None:
        try:
            return self.snapshot()
        except Exception as exc:  # progress must never break the step it watches
            self.logger.debug("progress snapshot failed: %s", exc)
            return None

    def emit(self, final: bool = False) -> None:
        """Write one progress line now."""
        tick = self._safe_tick()
        if tick is not None:
            text = line(self.label, tick, time.monotonic() - self._start)
            self.logger.info(PROGRESS, text, " (end)" if final else "", extra={"progress": True})
            self.lines += 1

    def _update_bar(self) -> None:
        tick = self._safe_tick()
        if tick is None or self._bar is None:
            return
        elapsed = time.monotonic() - self._start
        self._bar.total = max(tick.total, tick.done)
        self._bar.n = tick.done
        self._bar.set_postfix_str(
            f"{tick.audio_seconds:.0f} s audio, {tick.audio_seconds / elapsed if elapsed else 0:.1f}x real time",
            refresh=False,
        )
        self._bar.refresh()

    def _run(self) -> None:
        next_line = time.monotonic() + self.seconds
        while True:
            wait = next_line - time.monotonic()
            if self._stop.wait(max(0.0, min(BAR_SECONDS, wait) if self._bar is not None else wait)):
                return
            if self._bar is not None:
                self._update_bar()
            if time.monotonic() >= next_line:
                self.emit()
                next_line = max(next_line + self.seconds, time.monotonic())

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._update_bar()
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
        for h in self._filtered:
            h.removeFilter(self._filter)
        if kind is None:
            self.emit(final=True)
