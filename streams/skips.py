"""Records a reader could not use: counted, logged without flooding the log, and stepped over.

Readers of result topics (the bridge's fan-out, topic views) show other components' output; a record
they cannot decode or validate — whatever the decoder raised — must never stop them. Each skip is
counted (in a metric when the process has one), and logged: the first ``burst`` skips of an
``interval`` each get a line naming the record and the error; later ones are only counted, and their
number is logged in one line with the first skip of a later interval (the metric has them at once), so
a topic full of garbage costs ``burst + 2`` log lines per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SkippedRecords", "describe_error"]

_MAX_REASON = 300


def describe_error(exc: BaseException) -> str:
    """``Class: message``, cut to a readable length (a decoder's message can quote megabytes)."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not turn a skip into a crash
        message = "(message not printable)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class SkippedRecords:
    """Counts skipped records and logs them rate-limited (see the module docstring).

    ``counter`` is called with the topic for every skip (a Prometheus counter's
    ``labels(topic).inc`` in a process with metrics).
    """

    def __init__(self, logger: logging.Logger, reader: str, burst: int = 10, interval: float = 60.0,
                 counter: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.reader = reader
        self.burst = burst
        self.interval = interval
        self.counter = counter
        self.clock = clock
        self.total = 0
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0

    def skip(self, topic: str, partition: int, offset: int, exc: BaseException) -> None:
        """Account for one record that was stepped over because of ``exc``."""
        self.total += 1
        if self.counter is not None:
            try:
                self.counter(topic)
            except Exception:  # metrics are an aid; a failing one must not stop the reader
                self.logger.debug("skip counter failed", exc_info=True)
        now = self.clock()
        if self._window_start is None or now - self._window_start >= self.interval:
            self._close_window()
            self._window_start = now
        if self._logged < self.burst:
            self._logged += 1
            self.logger.warning("%s: skipping undecodable record %s[%d]@%d: %s", self.reader, topic, partition,
                                offset, describe_error(exc))
            if self._logged == self.burst:
                self.logger.warning("%s: more undecodable records in the next %.0f s are counted, not logged "
                                    "one by one", self.reader, self.interval)
        else:
            self._suppressed += 1

    def _close_window(self) -> None:
        if self._suppressed:
            self.logger.warning("%s: skipped %d more undecodable records (not logged one by one)", self.reader,
                                self._suppressed)
        self._logged = 0
        self._suppressed = 0
