"""Prometheus registries and the metrics several parts of buttress share.

Layers that count their own events (the rate limiter's rejections, retries) register
them through ``shared_counter`` on the registry their stack serves, so building a stack
twice never registers twice and no layer imports another to find a registry.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "default_registry",
    "make_registry",
    "multiprocess_enabled",
    "process_registry",
    "shared_counter",
    "shared_gauge",
    "shared_histogram",
    "shared_value",
]

_C = TypeVar("_C", Counter, Gauge, Histogram)


def multiprocess_enabled() -> bool:
    """Whether prometheus-client writes values to ``PROMETHEUS_MULTIPROC_DIR`` files.

    prometheus-client decides once, when it is imported; this reports that decision.
    """
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def make_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors (single process).

    In multiprocess mode the scrape reads workers' files instead, so it stays empty.
    """
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    if not multiprocess_enabled():
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


_process_registry: CollectorRegistry | None = None


def default_registry() -> CollectorRegistry:
    """The process-wide registry for metrics that belong to the process, not to a stack.

    ``buttress.retry`` counts ``retries_total`` here unless given a registry, and every
    ``MetricsMiddleware`` endpoint serves it next to its own stack's metrics. Created on
    first use, never at import time.
    """
    global _process_registry
    with _shared_lock:
        if _process_registry is None:
            _process_registry = CollectorRegistry()
        return _process_registry


def process_registry() -> CollectorRegistry | None:
    """The process-wide registry, if anything created it yet (never creates it)."""
    return _process_registry


_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_value(registry: CollectorRegistry, key: str, make: Any) -> Any:
    """The object stored under ``key`` for ``registry``, made by ``make()`` the first time."""
    with _shared_lock:
        known = _shared.setdefault(registry, {})
        found = known.get(key)
        if found is None:
            found = known[key] = make()
        return found


def _shared_metric(
    kind: type[_C],
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    registry: CollectorRegistry,
    namespace: str,
    **options: Any,
) -> _C:
    full = f"{namespace}_{name}" if namespace else name
    key = full.removesuffix("_total") if kind is Counter else full
    labels = tuple(labelnames)
    with _shared_lock:
        known = _shared.setdefault(registry, {})
        existing = known.get(key)
        if existing is not None:
            if type(existing) is not kind or tuple(existing._labelnames) != labels:
                raise ValueError(
                    f"metric {full!r} is already registered as a {type(existing).__name__} "
                    f"with labels {tuple(existing._labelnames)!r}; it cannot also be a "
                    f"{kind.__name__} with labels {labels!r}. Use another name."
                )
            return existing
        metric = kind(full, documentation, labels, registry=registry, **options)
        known[key] = metric
        return metric


def shared_counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry,
    namespace: str = "",
) -> Counter:
    """The counter ``name`` of ``registry``: created the first time, the same one after.

    Layers that count their own events (``ratelimit_rejections_total{route}``) call this
    with ``MetricsMiddleware.registry`` so building a stack twice never registers twice.
    """
    return _shared_metric(Counter, name, documentation, labelnames, registry, namespace)


def shared_histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry,
    namespace: str = "",
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    """The histogram ``name`` of ``registry`` (see ``shared_counter``)."""
    return _shared_metric(
        Histogram, name, documentation, labelnames, registry, namespace, buckets=tuple(buckets)
    )


def shared_gauge(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry,
    namespace: str = "",
    multiprocess_mode: str = "livesum",
) -> Gauge:
    """The gauge ``name`` of ``registry`` (see ``shared_counter``); live workers summed."""
    return _shared_metric(
        Gauge,
        name,
        documentation,
        labelnames,
        registry,
        namespace,
        multiprocess_mode=multiprocess_mode,
    )
