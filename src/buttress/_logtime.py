"""Time on the log path: the access line's timestamps and the throttle of repeated warnings."""

from __future__ import annotations

import datetime
import threading
import time

__all__ = ["LogThrottle", "UtcClock"]


class UtcClock:
    """ISO-8601 UTC timestamps like structlog's ``TimeStamper(fmt="iso", utc=True)``, cheaper.

    The date and time up to the second are formatted once per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._prefix = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
            self._second = second
        # %d truncates the float as int() would; cheaper than an f-string with int().
        return "%s.%06dZ" % (self._prefix, (t - second) * 1_000_000)  # noqa: UP031


class LogThrottle:
    """Lets a repeated warning through at most once per ``interval`` seconds.

    Under attack, one line per rejected request would turn the log into the attack's
    amplifier; the line that does pass says how many were suppressed since the last one.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._clock = time.monotonic
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """The number suppressed since the last allowed call, or None to stay quiet."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return None
            self._next = now + self._interval
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed
