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
# is ``<other>``. ``method`` is one of the standard methods or ``OTHER``. So the label
# children can be cached per ``(method, route, status)`` in a dict whose size is bounded,
# and the request path costs two dict lookups and three pre-bound child updates.
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
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

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


class _Children:
    """The pre-bound label children of one ``(method, route, status)``."""

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

        reg = self.registry
        self._requests = shared_counter(
            "http_requests_total",
            "HTTP requests by method, route template and final status.",
            ("method", "route", "status"),
            registry=reg,
            namespace=ns,
        )
        self._duration = shared_histogram(
            "http_request_duration_seconds",
            "Time from the request reaching this layer to the end of the response.",
            ("method", "route"),
            registry=reg,
            namespace=ns,
            buckets=s.metrics_buckets if buckets is None else buckets,
        )
        in_progress = shared_gauge(
            "http_requests_in_progress",
            "HTTP requests being served.",
            ("method",),
            registry=reg,
            namespace=ns,
        )
        self._size = shared_histogram(
            "http_response_size_bytes",
            "Bytes of response body sent.",
            ("method", "route"),
            registry=reg,
            namespace=ns,
            buckets=SIZE_BUCKETS,
        )
        self._in_progress = {m: in_progress.labels(m) for m in (*METHODS, "OTHER")}
        self._routes: set[str] = {UNMATCHED, OTHER}
        self._children: dict[tuple[str, str, int], _Children] = {}
        self._statuses: dict[int, str] = {}

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
        if method not in self._in_progress:
            method = "OTHER"
        info: RequestInfo | None = scope.get(INFO_KEY)
        if info is None:  # used alone: a private record, for the resolver's mount math
            info = RequestInfo("", None, scope.get("root_path", ""))
            info.trace_id = get_trace_id()
        status = 0
        size = 0
        gone = False

        async def receive_watching() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        async def send_counting(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.body":
                size += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                try:
                    await send(message)
                except OSError:
                    status = CANCELLED_STATUS  # the client left before the answer started
                    raise
                return
            await send(message)

        gauge = self._in_progress[method]
        gauge.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive_watching, send_counting)
        except Exception:
            if not status:
                status = CANCELLED_STATUS if gone else 500
            raise
        except BaseException as exc:
            if not status:
                # Cancelled: the client went away before an answer. Any other BaseException
                # (KeyboardInterrupt, SystemExit...) is answered 500 by the server, and the
                # access log says so too.
                status = CANCELLED_STATUS if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            duration = time.perf_counter() - start
            gauge.dec()
            if not status:  # returned without answering: the server sends a 500
                status = CANCELLED_STATUS if gone else 500
                if info.status == 0:
                    info.status = status  # so the access log tells the same story
            self._record(scope, info, path, method, status, duration, size)

    def _record(
        self,
        scope: Scope,
        info: RequestInfo,
        path: str,
        method: str,
        status: int,
        duration: float,
        size: int,
    ) -> None:
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
        children = self._children.get((method, route, status))
        if children is None:
            children = self._bind(method, route, status)
        children.count.inc()
        trace_id = info.trace_id
        if trace_id is not None:
            children.duration.observe(duration, {"trace_id": trace_id})
        else:
            children.duration.observe(duration)
        children.size.observe(size)

    def _bind(self, method: str, route: str, status: int) -> _Children:
        label = self._statuses.get(status)
        if label is None:
            if self._group_status:
                label = f"{status // 100}xx" if 100 <= status <= 599 else "other"
            else:
                label = str(status) if 100 <= status <= 999 else "other"
            self._statuses[status] = label
        children = _Children(
            self._requests.labels(method, route, label),
            self._duration.labels(method, route),
            self._size.labels(method, route),
        )
        self._children[(method, route, status)] = children
        return children

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
