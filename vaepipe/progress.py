"""Progress of long work as log lines: readable in a terminal, in cron mail and in Prefect's run logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("vaepipe")

# Whoever runs the library (a Prefect flow, say) can watch progress: listener(stage, fraction_done).
_listeners: list[Callable[[str, float], None]] = []


def add_listener(listener: Callable[[str, float], None]) -> None:
    _listeners.append(listener)


def remove_listener(listener: Callable[[str, float], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


class Progress:
    """Logs `stage: done/total (pct) rate/s, eta` at most every `every_s` seconds, and once at the end."""

    def __init__(self, stage: str, total: int, unit: str = "images", every_s: float = 5.0):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done = 0
        self.logged = -1  # `done` when last logged: the end is logged once, not again by close()
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._log(now)

    def close(self) -> float:
        now = time.monotonic()
        if self.logged != self.done:
            self._log(now)
        return now - self.start

    def _log(self, now: float) -> None:
        self.logged = self.done
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(pct / 5) + "-" * (20 - int(pct / 5))
        log.info(
            "%s [%s] %.0f%% %s/%s %s, %.0f/s, %.1fs elapsed, eta %.0fs",
            self.stage, bar, pct, f"{self.done:,}", f"{self.total:,}", self.unit, rate, elapsed, eta,
        )
        for listener in list(_listeners):
            listener(self.stage, pct / 100.0)
