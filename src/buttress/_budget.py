"""How many reports of one error an error storm may cost: a token bucket per fingerprint.

# Strategy: a report (a Sentry event and a traceback log line) costs 17-90 ms of CPU on the
# event loop, and a failing dependency makes every request fail the same way. Each
# fingerprint (exception type and route template) gets a bucket of ``per_minute`` tokens,
# full at first, so the first report of a new error is always immediate; it refills at
# ``per_minute`` per minute. A report over budget costs one dictionary lookup; the next
# one that passes says how many it stands for. The table is bounded (least recently
# used fingerprints go first), so neither exception types nor paths can grow it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["ReportBudget", "ReportGate"]


class ReportBudget:
    """Allows ``per_minute`` reports per fingerprint per minute, in bursts of that many."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute={per_minute!r}: expected at least 1")
        self.per_minute = per_minute
        self.clock = clock
        self._rate = per_minute / 60.0
        self._max_keys = max_keys
        # fingerprint -> [tokens, last refill time, reports suppressed since the last one]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> int | None:
        """The number held back since the last allowed report of ``key``, or None to hold."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [float(self.per_minute), now, 0.0]
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = now - bucket[1]
                if elapsed > 0:
                    bucket[0] = min(float(self.per_minute), bucket[0] + elapsed * self._rate)
                bucket[1] = now
            if bucket[0] < 1.0:
                bucket[2] += 1
                return None
            bucket[0] -= 1.0
            suppressed, bucket[2] = int(bucket[2]), 0.0
            return suppressed


class ReportGate:
    """An error layer's budget (``per_minute``, 0 for none) and the count of what it held back.

    Held-back reports are counted in ``sentry_reports_dropped_total{reason="budget"}`` of
    ``registry`` (when given).
    """

    def __init__(self, per_minute: int, registry: Any = None, namespace: str = "") -> None:
        self.budget = ReportBudget(per_minute) if per_minute else None
        self._dropped: Any = None
        if registry is not None and self.budget is not None:
            from buttress._registry import shared_counter

            self._dropped = shared_counter(
                "sentry_reports_dropped_total",
                "Error reports (Sentry event and traceback log line) not made, by reason.",
                ["reason"],
                registry=registry,
                namespace=namespace,
            ).labels(reason="budget")

    def admit(self, exc: BaseException, route: Callable[[], str | None]) -> int | None:
        """How many reports of this error were held back before this one; None: hold it.

        ``route`` gives the route template, asked only when there is a budget; an
        unmatched path counts as one route, so path scanning cannot make new fingerprints.
        """
        if self.budget is None:
            return 0
        kind = type(exc)
        held = self.budget.take((kind.__module__, kind.__qualname__, route() or "<unmatched>"))
        if held is None and self._dropped is not None:
            self._dropped.inc()
        return held
