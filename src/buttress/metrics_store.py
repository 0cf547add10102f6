"""The four request metrics of one registry as plain Python numbers, exposed at scrape time.

# Strategy: no locks on the request path (single process).
# prometheus-client takes a lock per value update: seven per request for these four
# metrics, about 7 us. Here a request adds to ints and floats in slotted objects and
# finds its buckets with ``bisect`` (about 0.5 us): on the whole ``wrap()`` stack around
# Starlette that is 236k instead of 267k instructions per request (callgrind, 2026-11),
# about a fifth of what buttress adds. A collector turns the values into
# the same families (names, help, labels, ``_created``, exemplars) at scrape time; a
# property test (tests/test_metrics_store.py) proves the exposition identical to
# prometheus-client's own metrics for the same observations. That is safe without locks
# because every update happens on the event loop thread: ``MetricsMiddleware.__call__`` is
# a coroutine run by the loop that serves the request, and the loop runs one callback at a
# time, so no ``+=`` can interleave with another. A scrape from another thread reads
# snapshots (``list(dict.items())``, atomic under the GIL): at worst a histogram's sum is
# one observation ahead of its buckets. With ``PROMETHEUS_MULTIPROC_DIR`` the values must
# reach the workers' files, so prometheus-client's own metrics are used instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from buttress._registry import shared_value

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["METHODS", "SIZE_BUCKETS", "Shape", "Store", "store_for"]

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)

REQUESTS_HELP = "HTTP requests by method, route template and final status."
DURATION_HELP = "Time from the request reaching this layer to the last byte of the response."
PROGRESS_HELP = "HTTP requests being served."
SIZE_HELP = "Bytes of response body sent."
REQUEST_SIZE_HELP = "Bytes of request body received."


class _Count:
    """One ``http_requests_total`` series: a plain number, updated on the loop thread."""

    __slots__ = ("created", "exemplar", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()
        #: The last ``(labels, value, unix time)`` exemplar, if any.
        self.exemplar: tuple[dict[str, str], float, float] | None = None


class _Histogram:
    """One histogram series: per-bucket (not cumulative) counts, the sum, exemplars."""

    __slots__ = ("buckets", "created", "exemplars", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        #: The last ``(labels, value, unix time)`` observed into each bucket, if any.
        self.exemplars: list[tuple[dict[str, str], float, float] | None] = [None] * size
        self.created = time.time()


def _bounds(buckets: Sequence[float]) -> list[float]:
    """Upper bounds as prometheus-client's ``Histogram`` makes them (``+Inf`` last)."""
    bounds = [float(b) for b in buckets]
    if bounds != sorted(bounds):
        raise ValueError("Buckets not in sorted order")
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    if len(bounds) < 2:
        raise ValueError("Must have at least two buckets")
    return bounds


def _use_created() -> bool:
    """Whether ``_created`` series are exposed (``PROMETHEUS_DISABLE_CREATED_SERIES``).

    prometheus-client keeps this in a private module variable with no public getter; a
    test (tests/test_metrics_store.py) fails the day it moves, and so does this line.
    """
    from prometheus_client import metrics

    return bool(metrics._use_created)


class Shape:
    """The label names of the request metrics (the same for the store and prometheus-client).

    ``extra`` labels (from headers or a callable) follow the standard ones; ``status`` is on
    the histograms too when ``duration_status``; ``request_size`` adds a histogram.
    """

    __slots__ = ("counter", "extra", "histogram", "request_size")

    def __init__(
        self, extra: Sequence[str] = (), duration_status: bool = False, request_size: bool = False
    ) -> None:
        self.extra = tuple(extra)
        self.counter = ("method", "route", "status", *self.extra)
        base = ("method", "route", "status") if duration_status else ("method", "route")
        self.histogram = (*base, *self.extra)
        self.request_size = request_size

    def key(self) -> tuple[object, ...]:
        return (self.counter, self.histogram, self.request_size)


class Store:
    """The request metrics of one registry and namespace, as plain Python values."""

    def __init__(self, namespace: str, buckets: Sequence[float], shape: Shape) -> None:
        prefix = f"{namespace}_" if namespace else ""
        self.shape = shape
        self.requests_name = prefix + "http_requests_total"
        self.duration_name = prefix + "http_request_duration_seconds"
        self.progress_name = prefix + "http_requests_in_progress"
        self.size_name = prefix + "http_response_size_bytes"
        self.request_size_name = prefix + "http_request_size_bytes"
        self.duration_bounds = _bounds(buckets)
        self.size_bounds = _bounds(SIZE_BUCKETS)
        self.progress = dict.fromkeys((*METHODS, "OTHER"), 0)
        self.counts: dict[tuple[str, ...], _Count] = {}
        self.durations: dict[tuple[str, ...], _Histogram] = {}
        self.sizes: dict[tuple[str, ...], _Histogram] = {}
        self.request_sizes: dict[tuple[str, ...], _Histogram] = {}

    def count(self, labels: tuple[str, ...]) -> _Count:
        found = self.counts.get(labels)
        if found is None:
            found = self.counts[labels] = _Count()
        return found

    def histograms(
        self, labels: tuple[str, ...]
    ) -> tuple[_Histogram, _Histogram, _Histogram | None]:
        duration = self.durations.get(labels)
        if duration is None:
            duration = self.durations[labels] = _Histogram(len(self.duration_bounds))
            self.sizes[labels] = _Histogram(len(self.size_bounds))
            if self.shape.request_size:
                self.request_sizes[labels] = _Histogram(len(self.size_bounds))
        return duration, self.sizes[labels], self.request_sizes.get(labels)

    def _families(self) -> list[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        shape = self.shape
        families: list[Metric] = [
            CounterMetricFamily(self.requests_name, REQUESTS_HELP, labels=shape.counter),
            HistogramMetricFamily(self.duration_name, DURATION_HELP, labels=shape.histogram),
            GaugeMetricFamily(self.progress_name, PROGRESS_HELP, labels=("method",)),
            HistogramMetricFamily(self.size_name, SIZE_HELP, labels=shape.histogram),
        ]
        if shape.request_size:
            families.append(
                HistogramMetricFamily(
                    self.request_size_name, REQUEST_SIZE_HELP, labels=shape.histogram
                )
            )
        return families

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so a registry can refuse a clashing name."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """The current values, as prometheus-client's own metrics would expose them."""
        from prometheus_client.samples import Exemplar, Sample

        created = _use_created()
        families = self._families()
        requests, duration, progress, size = families[:4]
        samples = requests.samples
        total, made = requests.name + "_total", requests.name + "_created"
        names = self.shape.counter
        for values, count in list(self.counts.items()):
            labels = dict(zip(names, values, strict=True))
            mark = count.exemplar
            exemplar = Exemplar(mark[0], mark[1], mark[2]) if mark is not None else None
            samples.append(Sample(total, labels, float(count.value), None, exemplar))
            if created:
                samples.append(Sample(made, labels, count.created, None, None))
        hist = self.shape.histogram
        self._histogram_samples(duration, hist, self.durations, self.duration_bounds, created)
        for method, value in list(self.progress.items()):
            progress.samples.append(
                Sample(progress.name, {"method": method}, float(value), None, None)
            )
        self._histogram_samples(size, hist, self.sizes, self.size_bounds, created)
        if len(families) > 4:
            self._histogram_samples(
                families[4], hist, self.request_sizes, self.size_bounds, created
            )
        return iter(families)

    @staticmethod
    def _histogram_samples(
        family: Metric,
        names: tuple[str, ...],
        series: dict[tuple[str, ...], _Histogram],
        bounds: list[float],
        created: bool,
    ) -> None:
        from prometheus_client.samples import Exemplar, Sample
        from prometheus_client.utils import floatToGoString

        name, samples = family.name, family.samples
        les = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        for values, histogram in list(series.items()):
            labels = dict(zip(names, values, strict=True))
            exemplars = list(histogram.exemplars)
            acc = 0.0
            for i, count in enumerate(list(histogram.buckets)):
                acc += count
                mark = exemplars[i]
                exemplar = None
                if mark is not None:
                    exemplar = Exemplar(mark[0], mark[1], mark[2])
                bucket = {**labels, "le": les[i]}
                samples.append(Sample(name + "_bucket", bucket, acc, None, exemplar))
            samples.append(Sample(name + "_count", labels, acc, None, None))
            if bounds[0] >= 0:
                samples.append(Sample(name + "_sum", labels, histogram.sum, None, None))
            if created:
                samples.append(Sample(name + "_created", labels, histogram.created, None, None))


def store_for(
    registry: CollectorRegistry, namespace: str, buckets: Sequence[float], shape: Shape
) -> Store:
    """The one ``Store`` of ``registry`` and ``namespace``, registered on first use.

    Stacks built on one registry share it (so they add up, as prometheus-client's metrics
    would); the first one's buckets win, as with ``shared_histogram``. Stacks that share a
    registry must agree on the label shape.
    """

    def make() -> Store:
        store = Store(namespace, buckets, shape)
        registry.register(store)
        return store

    found: Store = shared_value(registry, f"\0store:{namespace}", make)
    if found.shape.key() != shape.key():
        raise ValueError(
            f"another metrics layer on this registry (namespace {namespace!r}) uses other "
            "labels; give this stack its own registry or the same metrics options."
        )
    return found
