"""Prometheus RED metrics by route template for any ASGI app, and a safe ``/metrics``.

Metrics (``BUTTRESS_METRICS_NAMESPACE`` prefixes every name)::

    http_requests_total{method,route,status}         counter
    http_request_duration_seconds{method,route}      histogram (BUTTRESS_METRICS_BUCKETS)
    http_requests_in_progress{method}                gauge
    http_response_size_bytes{method,route}           histogram

# Strategy: bounded labels, paid for once.
# ``route`` is the template the framework matched (``buttress._routes.resolve_route``,
# read after the app ran), never the raw path: a 404 is ``<unmatched>`` unless a path
# group names it, and past ``BUTTRESS_METRICS_MAX_ROUTES`` distinct values every new one
# is ``<other>``. ``method`` is one of the standard methods or ``OTHER``. So what a
# request updates can be cached per ``(method, route, status)`` in a dict whose size is
# bounded, and the request path costs two dict lookups and a few additions.
#
# # Strategy: one process, no locks.
# In a single process the four request metrics are plain Python numbers (``_Store``,
# updated on the event loop thread only, see there), exposed through a custom collector
# at scrape time with the exact families prometheus-client's metrics would give. Under
# a buttress context layer no second ``send`` wrapper is installed: its wrapper already
# records the final status and the body bytes in the shared ``RequestInfo``.
#
# # Strategy: many workers.
# prometheus-client chooses file-backed values when ``PROMETHEUS_MULTIPROC_DIR`` is set
# at import time. Then the endpoint aggregates every worker's files on a fresh registry
# at scrape time. The in-progress gauge uses ``livesum``: the sum over live workers only,
# so a worker killed mid-request does not leave a request "in progress" for ever. Files
# of dead workers' live gauges are removed (``mark_process_dead``) at scrape time, since
# uvicorn's supervisor offers no worker-exit hook; counters and histograms of dead
# workers are kept, so totals never go backwards.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import gzip
import hmac
import math
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from buttress._asgi import (
    INFO_KEY,
    ASGIApp,
    Message,
    Receive,
    RequestInfo,
    Scope,
    Send,
    get_header,
    send_json,
)
from buttress._routes import OTHER, UNMATCHED, resolve_route
from buttress.config import ConfigError, Settings
from buttress.context import get_trace_id

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "MetricsMiddleware",
    "make_registry",
    "multiprocess_enabled",
    "prepare_multiprocess_dir",
    "shared_counter",
    "shared_gauge",
    "shared_histogram",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
#: The status label of a request the client abandoned before any answer (nginx's 499):
#: cancelled, ended without a response after the client disconnected, or the server could
#: not send the response start because the client had gone.
CANCELLED_STATUS = 499

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_C = TypeVar("_C", Counter, Gauge, Histogram)


# --- registries and metrics other layers share -------------------------------------------


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


class _Both:
    """A registry view that collects a stack's registry and then the process-wide one."""

    def __init__(self, first: CollectorRegistry, second: CollectorRegistry) -> None:
        self._first = first
        self._second = second

    def collect(self) -> Any:
        yield from self._first.collect()
        yield from self._second.collect()


_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


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


# --- many workers ------------------------------------------------------------------------


def prepare_multiprocess_dir(workers: int) -> str | None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` usable before ``workers`` processes start.

    Call it before the workers import prometheus-client. When the variable is set, it
    must name a writable directory (``ConfigError`` otherwise) and is returned. When it
    is unset and ``workers > 1``, a fresh temporary directory is created, exported and
    returned; it is removed when this (the supervising) process exits. One worker needs
    nothing: ``None``.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path is not None:
        if not path or not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(
                [
                    f"{MULTIPROC_ENV}={path!r} is not a writable directory; create it "
                    f"(mkdir -p {path or '<dir>'}), make it writable by the "
                    "server's user and empty it before each start, or unset "
                    f"{MULTIPROC_ENV} and buttress run creates a fresh one."
                ]
            )
        return path
    if workers <= 1:
        return None
    path = tempfile.mkdtemp(prefix="buttress-metrics-")
    os.environ[MULTIPROC_ENV] = path
    owner = os.getpid()

    def _remove() -> None:
        if os.getpid() == owner:  # never from a forked worker
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_remove)
    return path


def _reap_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that no longer run (uvicorn restarts them)."""
    from prometheus_client import multiprocess

    pids: set[int] = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        tail = os.path.basename(file)[:-3].rpartition("_")[2]
        if tail.isdigit():
            pids.add(int(tail))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except OSError:  # alive, owned by another user
            pass


# --- the middleware ----------------------------------------------------------------------


def _accepts_gzip(header: bytes | None) -> bool:
    if not header:
        return False
    for part in header.decode("latin-1").split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class _Count:
    """One ``http_requests_total`` series: a plain number, updated on the loop thread."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Histogram:
    """One histogram series: per-bucket (not cumulative) counts, the sum, exemplars."""

    __slots__ = ("buckets", "created", "exemplars", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        #: The last ``(trace_id, value, unix time)`` observed into each bucket, if any.
        self.exemplars: list[tuple[str, float, float] | None] = [None] * size
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
    """Whether ``_created`` series are exposed (``PROMETHEUS_DISABLE_CREATED_SERIES``)."""
    from prometheus_client import metrics

    return bool(getattr(metrics, "_use_created", True))


class _Store:
    """The four request metrics of one registry and namespace, as plain Python values.

    # Strategy: no locks on the request path (single process).
    # prometheus-client takes a lock per value update: seven per request for these four
    # metrics, about 7 us. Here a request adds to ints and floats in slotted objects and
    # finds its buckets with ``bisect`` (about 0.5 us), and this collector turns the values
    # into the same families (names, help, labels, ``_created``, exemplars) at scrape time.
    # That is safe without locks because every update happens on the event loop thread:
    # ``MetricsMiddleware.__call__`` and its receive/send wrappers are coroutines run by
    # the loop that serves the request, and the loop runs one callback at a time, so no
    # ``+=`` can interleave with another. A scrape from another thread (a
    # ``start_http_server``) reads snapshots (``list(dict.items())``, atomic under the
    # GIL): at worst a histogram's sum is one observation ahead of its buckets.
    # With ``PROMETHEUS_MULTIPROC_DIR`` the values must reach the workers' files, so
    # prometheus-client's own metrics are used instead (``MetricsMiddleware._fast``).
    """

    def __init__(self, namespace: str, buckets: Sequence[float]) -> None:
        prefix = f"{namespace}_" if namespace else ""
        self.requests_name = prefix + "http_requests_total"
        self.duration_name = prefix + "http_request_duration_seconds"
        self.progress_name = prefix + "http_requests_in_progress"
        self.size_name = prefix + "http_response_size_bytes"
        self.duration_bounds = _bounds(buckets)
        self.size_bounds = _bounds(SIZE_BUCKETS)
        self.progress = dict.fromkeys((*METHODS, "OTHER"), 0)
        self.counts: dict[tuple[str, str, str], _Count] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.sizes: dict[tuple[str, str], _Histogram] = {}

    def count(self, method: str, route: str, status: str) -> _Count:
        key = (method, route, status)
        found = self.counts.get(key)
        if found is None:
            found = self.counts[key] = _Count()
        return found

    def histograms(self, method: str, route: str) -> tuple[_Histogram, _Histogram]:
        key = (method, route)
        duration = self.durations.get(key)
        if duration is None:
            duration = self.durations[key] = _Histogram(len(self.duration_bounds))
            self.sizes[key] = _Histogram(len(self.size_bounds))
        return duration, self.sizes[key]

    def _families(self) -> tuple[Metric, Metric, Metric, Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        route = ("method", "route")
        return (
            CounterMetricFamily(self.requests_name, _REQUESTS_HELP, labels=(*route, "status")),
            HistogramMetricFamily(self.duration_name, _DURATION_HELP, labels=route),
            GaugeMetricFamily(self.progress_name, _PROGRESS_HELP, labels=("method",)),
            HistogramMetricFamily(self.size_name, _SIZE_HELP, labels=route),
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so a registry can refuse a clashing name."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """The current values, as prometheus-client's own metrics would expose them."""
        from prometheus_client.samples import Sample

        created = _use_created()
        requests, duration, progress, size = self._families()
        samples = requests.samples
        total, made = requests.name + "_total", requests.name + "_created"
        for (method, route, status), count in list(self.counts.items()):
            labels = {"method": method, "route": route, "status": status}
            samples.append(Sample(total, labels, float(count.value), None, None))
            if created:
                samples.append(Sample(made, labels, count.created, None, None))
        self._histogram_samples(duration, self.durations, self.duration_bounds, created)
        for method, value in list(self.progress.items()):
            progress.samples.append(
                Sample(progress.name, {"method": method}, float(value), None, None)
            )
        self._histogram_samples(size, self.sizes, self.size_bounds, created)
        return iter((requests, duration, progress, size))

    @staticmethod
    def _histogram_samples(
        family: Metric,
        series: dict[tuple[str, str], _Histogram],
        bounds: list[float],
        created: bool,
    ) -> None:
        from prometheus_client.samples import Exemplar, Sample
        from prometheus_client.utils import floatToGoString

        name, samples = family.name, family.samples
        les = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        for (method, route), histogram in list(series.items()):
            labels = {"method": method, "route": route}
            exemplars = list(histogram.exemplars)
            acc = 0.0
            for i, count in enumerate(list(histogram.buckets)):
                acc += count
                mark = exemplars[i]
                exemplar = None
                if mark is not None:
                    exemplar = Exemplar({"trace_id": mark[0]}, mark[1], mark[2])
                bucket = {**labels, "le": les[i]}
                samples.append(Sample(name + "_bucket", bucket, acc, None, exemplar))
            samples.append(Sample(name + "_count", labels, acc, None, None))
            if bounds[0] >= 0:
                samples.append(Sample(name + "_sum", labels, histogram.sum, None, None))
            if created:
                samples.append(Sample(name + "_created", labels, histogram.created, None, None))


_REQUESTS_HELP = "HTTP requests by method, route template and final status."
_DURATION_HELP = "Time from the request reaching this layer to the end of the response."
_PROGRESS_HELP = "HTTP requests being served."
_SIZE_HELP = "Bytes of response body sent."


def _store(registry: CollectorRegistry, namespace: str, buckets: Sequence[float]) -> _Store:
    """The one ``_Store`` of ``registry`` and ``namespace``, registered on first use.

    Stacks built on one registry share it (so they add up, as prometheus-client's metrics
    would); the first one's buckets win, as with ``shared_histogram``.
    """
    key = f"\0store:{namespace}"
    with _shared_lock:
        known = _shared.setdefault(registry, {})
        store = known.get(key)
        if store is None:
            store = _Store(namespace, buckets)
            registry.register(store)
            known[key] = store
        return store


class _Cell:
    """What one ``(method, route, status)`` request updates.

    Single process: a ``_Count`` and two ``_Histogram``; many workers: prometheus-client's
    pre-bound label children.
    """

    __slots__ = ("count", "duration", "size")

    def __init__(self, count: Any, duration: Any, size: Any) -> None:
        self.count = count
        self.duration = duration
        self.size = size


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and final status; serves scrapes.

    ``GET``/``HEAD`` on the metrics path is answered here for any app (other methods get
    405), is not counted and, with a token configured, requires ``Authorization: Bearer``.
    ``websocket`` and ``lifespan`` scopes pass through uncounted. ``registry`` defaults to
    a fresh one per instance (``make_registry()``), so stacks never collide.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        registry: CollectorRegistry | None = None,
        namespace: str | None = None,
        buckets: Sequence[float] | None = None,
        path: str | None = None,
        token: str | None = None,
        max_routes: int | None = None,
        path_groups: Mapping[str, str] | None = None,
        group_status: bool | None = None,
    ) -> None:
        s = settings or Settings.from_env()
        self.app = app
        ns = s.metrics_namespace if namespace is None else namespace
        if ns and not _NAME.fullmatch(ns):
            raise ConfigError(
                [
                    f"BUTTRESS_METRICS_NAMESPACE={ns!r} is not a metric name prefix; use "
                    "letters, digits and underscores, not starting with a digit, like 'shop'."
                ]
            )
        self.namespace = ns
        self.registry = make_registry() if registry is None else registry
        self._path = s.metrics_path if path is None else path
        secret = s.metrics_token if token is None else token
        self._expected = ("Bearer " + secret).encode("latin-1") if secret else None
        self._max_routes = s.metrics_max_routes if max_routes is None else max_routes
        groups = s.metrics_path_groups if path_groups is None else path_groups
        self._groups = tuple((re.compile(p), t) for p, t in groups.items())
        self._group_status = s.metrics_group_status if group_status is None else group_status
        self._multiprocess = multiprocess_enabled()
        self._fast = not self._multiprocess
        self._methods = frozenset(METHODS)
        self._routes: set[str] = {UNMATCHED, OTHER}
        self._cells: dict[tuple[str, str, int], _Cell] = {}
        self._statuses: dict[int, str] = {}

        reg = self.registry
        chosen = s.metrics_buckets if buckets is None else buckets
        if self._fast:
            store = self._store = _store(reg, ns, chosen)
            self._progress = store.progress
            self._duration_bounds = store.duration_bounds
            self._size_bounds = store.size_bounds
            return
        self._requests = shared_counter(
            "http_requests_total",
            _REQUESTS_HELP,
            ("method", "route", "status"),
            registry=reg,
            namespace=ns,
        )
        self._duration = shared_histogram(
            "http_request_duration_seconds",
            _DURATION_HELP,
            ("method", "route"),
            registry=reg,
            namespace=ns,
            buckets=chosen,
        )
        in_progress = shared_gauge(
            "http_requests_in_progress",
            _PROGRESS_HELP,
            ("method",),
            registry=reg,
            namespace=ns,
        )
        self._size = shared_histogram(
            "http_response_size_bytes",
            _SIZE_HELP,
            ("method", "route"),
            registry=reg,
            namespace=ns,
            buckets=SIZE_BUCKETS,
        )
        self._in_progress = {m: in_progress.labels(m) for m in (*METHODS, "OTHER")}

    # -- the request path --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a scrape, or run the app and count the request once it ended."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        mpath = self._path
        if mpath and (
            path == mpath or (path.endswith(mpath) and path == scope.get("root_path", "") + mpath)
        ):
            await self._serve(scope, send)
            return

        method: str = scope["method"]
        if method not in self._methods:
            method = "OTHER"
        gone = False

        async def receive_watching() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        info: RequestInfo | None = scope.get(INFO_KEY)
        if info is not None:
            # The context layer outside already wraps ``send``: its wrapper records the
            # status the client got in ``info.status`` (499 when the start could not be
            # sent) and counts the body bytes in ``info.sent``. No second wrapper.
            inner_send = send
            start = time.perf_counter()
        else:  # used alone: a private record, for the resolver's mount math and the counts
            info = own = RequestInfo("", None, scope.get("root_path", ""))
            info.trace_id = get_trace_id()
            start = info.start  # just taken

            async def inner_send(message: Message) -> None:
                kind = message["type"]
                if kind == "http.response.body":
                    own.sent += len(message.get("body", b""))
                elif kind == "http.response.start":
                    own.status = message["status"]
                    try:
                        await send(message)
                    except OSError:
                        own.status = CANCELLED_STATUS  # the client left before the answer
                        raise
                    return
                await send(message)

        fast = self._fast
        if fast:
            self._progress[method] += 1
        else:
            self._in_progress[method].inc()
        status = 0
        try:
            await self.app(scope, receive_watching, inner_send)
        except Exception:
            status = info.status or (CANCELLED_STATUS if gone else 500)
            raise
        except BaseException as exc:
            # Cancelled: the client went away before an answer. Any other BaseException
            # (KeyboardInterrupt, SystemExit...) is answered 500 by the server, and the
            # access log says so too.
            status = info.status or (
                CANCELLED_STATUS if isinstance(exc, asyncio.CancelledError) else 500
            )
            raise
        finally:
            duration = time.perf_counter() - start
            if fast:
                self._progress[method] -= 1
            else:
                self._in_progress[method].dec()
            if not status:
                status = info.status
                if not status:  # returned without answering: the server sends a 500
                    status = info.status = CANCELLED_STATUS if gone else 500
            # Inlined (no helper call): this block is most of the layer's own cost.
            route = resolve_route(scope, info)
            if route is None:
                route = UNMATCHED
                for pattern, template in self._groups:
                    if pattern.match(path):
                        route = template
                        info.route = template  # the access log and Sentry name it the same
                        break
            routes = self._routes
            if route not in routes:
                if len(routes) - 2 >= self._max_routes:
                    route = OTHER
                else:
                    routes.add(route)
            cell = self._cells.get((method, route, status))
            if cell is None:
                cell = self._bind(method, route, status)
            if fast:
                cell.count.value += 1
                histogram = cell.duration
                i = bisect_left(self._duration_bounds, duration)
                histogram.buckets[i] += 1
                histogram.sum += duration
                trace_id = info.trace_id
                if trace_id is not None:
                    histogram.exemplars[i] = (trace_id, duration, time.time())
                histogram = cell.size
                size = info.sent
                histogram.buckets[bisect_left(self._size_bounds, size)] += 1
                histogram.sum += size
            else:
                self._observe(cell, duration, info.sent, info.trace_id)

    @staticmethod
    def _observe(cell: _Cell, duration: float, size: int, trace_id: str | None) -> None:
        """Many workers: prometheus-client's children write to the workers' files."""
        cell.count.inc()
        if trace_id is not None:
            cell.duration.observe(duration, {"trace_id": trace_id})
        else:
            cell.duration.observe(duration)
        cell.size.observe(size)

    def _bind(self, method: str, route: str, status: int) -> _Cell:
        label = self._statuses.get(status)
        if label is None:
            if self._group_status:
                label = f"{status // 100}xx" if 100 <= status <= 599 else "other"
            else:
                label = str(status) if 100 <= status <= 999 else "other"
            self._statuses[status] = label
        if self._fast:
            store = self._store
            cell = _Cell(store.count(method, route, label), *store.histograms(method, route))
        else:
            cell = _Cell(
                self._requests.labels(method, route, label),
                self._duration.labels(method, route),
                self._size.labels(method, route),
            )
        self._cells[(method, route, status)] = cell
        return cell

    # -- the endpoint --

    async def _serve(self, scope: Scope, send: Send) -> None:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            await send_json(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"GET, HEAD")])
            return
        headers = scope.get("headers") or ()
        if self._expected is not None:
            given = get_header(headers, b"authorization") or b""
            if not hmac.compare_digest(given, self._expected):
                await send_json(
                    send,
                    401,
                    {"detail": "The metrics endpoint requires 'Authorization: Bearer <token>'."},
                    [(b"www-authenticate", b'Bearer realm="metrics"')],
                )
                return
        from prometheus_client.exposition import choose_encoder

        accept = get_header(headers, b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        body = encoder(self._scrape_registry())
        out = [
            (b"content-type", content_type.encode("latin-1")),
            (b"vary", b"Accept-Encoding"),
            (b"cache-control", b"no-store"),
        ]
        if _accepts_gzip(get_header(headers, b"accept-encoding")):
            body = gzip.compress(body, compresslevel=6)
            out.append((b"content-encoding", b"gzip"))
        out.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _scrape_registry(self) -> Any:
        if not self._multiprocess:
            process = _process_registry
            if process is None or process is self.registry:
                return self.registry
            return _Both(self.registry, process)
        from prometheus_client import multiprocess

        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return self.registry
        _reap_dead_workers(directory)
        fresh = CollectorRegistry()
        multiprocess.MultiProcessCollector(fresh, path=directory)  # type: ignore[no-untyped-call]
        return fresh
