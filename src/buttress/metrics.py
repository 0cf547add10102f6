"""Prometheus RED metrics by route template for any ASGI app, and a safe ``/metrics``.

Metrics (the ``namespace`` option prefixes every name)::

    http_requests_total{method,route,status}         counter
    http_request_duration_seconds{method,route}      histogram (``buckets``)
    http_requests_in_progress{method}                gauge
    http_response_size_bytes{method,route}           histogram

# Strategy: bounded labels, paid for once.
# ``route`` is the template the framework matched (``buttress._routes.resolve_route``,
# read after the app ran), never the raw path: a 404 is ``<unmatched>`` unless a path
# group names it, and past ``max_routes`` distinct values every new one is ``<other>``.
# ``method`` is one of the standard methods or ``OTHER``. So what a request updates can be
# cached per ``(method, route, status)`` in a dict whose size is bounded, and the request
# path costs two dict lookups and a few additions.
#
# Strategy: one record, one ``send`` wrapper. Under a buttress context layer the request
# record already holds the final status, the body bytes and the time of the last body
# byte, so this layer installs no wrapper of its own; used alone, it makes a record and
# the same small responder.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from buttress._asgi import ASGIApp, Receive, Scope, Send
from buttress._paths import RouteTable
from buttress._registry import (
    make_registry,
    multiprocess_enabled,
    shared_counter,
    shared_gauge,
    shared_histogram,
)
from buttress._request import RECORD_KEY, RecordingResponder, RequestRecord
from buttress._routes import OTHER, UNMATCHED, resolve_route
from buttress.config import DEFAULT_BUCKETS, option
from buttress.metrics_endpoint import MetricsEndpoint, prepare_multiprocess_dir
from buttress.metrics_labels import ExtraLabels, Source, exemplar_of
from buttress.metrics_store import (
    DURATION_HELP,
    METHODS,
    PROGRESS_HELP,
    REQUEST_SIZE_HELP,
    REQUESTS_HELP,
    SIZE_BUCKETS,
    SIZE_HELP,
    Shape,
    store_for,
)

__all__ = ["MetricsMiddleware", "make_registry", "prepare_multiprocess_dir"]


class _Cell:
    """What one ``(method, route, status)`` request updates.

    Single process: a store count and two store histograms; many workers:
    prometheus-client's pre-bound label children.
    """

    __slots__ = ("count", "duration", "request_size", "size")

    def __init__(self, count: Any, duration: Any, size: Any, request_size: Any = None) -> None:
        self.count = count
        self.duration = duration
        self.size = size
        self.request_size = request_size


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and final status; serves scrapes.

    ``GET``/``HEAD`` on ``path`` is answered here for any app (other methods get 405), is
    not counted and, with a ``token``, requires ``Authorization: Bearer <token>``. The
    encoding runs off the event loop (see ``metrics_endpoint``). ``websocket`` and
    ``lifespan`` scopes pass through uncounted. ``registry`` defaults to a fresh one per
    instance (``make_registry()``), so stacks never collide.

    Options beyond the defaults: ``skip_paths`` (patterns like ``/health/{probe}``) and
    ``skip_methods`` are not counted; ``extra_labels`` adds bounded labels from a request
    header (``"request:X-Tenant"``), a response header (``"response:X-Cache"``) or a
    callable of ``(scope, record)``; ``duration_status`` puts ``status`` on the
    histograms; ``request_size`` adds ``http_request_size_bytes``; ``exemplar`` is a
    callable of the record giving exemplar labels (the trace id by default), set on the
    counter and the duration histogram.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "",
        buckets: Sequence[float] | str = DEFAULT_BUCKETS,
        path: str = "/metrics",
        token: str | None = None,
        max_routes: int = 1000,
        path_groups: Mapping[str, str] | str | None = None,
        group_status: bool = False,
        skip_paths: Iterable[str] | str = (),
        skip_methods: Iterable[str] | str = (),
        extra_labels: Mapping[str, Source] | str | None = None,
        max_label_values: int = 50,
        duration_status: bool = False,
        request_size: bool = False,
        exemplar: Callable[[RequestRecord], dict[str, str] | None] | None = exemplar_of,
    ) -> None:
        self.app = app
        self.namespace = ns = option("namespace", "metrics_namespace", namespace)
        self.registry = make_registry() if registry is None else registry
        self._path = option("path", "metrics_path", path)
        self.endpoint = MetricsEndpoint(
            self.registry, token=option("token", "metrics_token", token)
        )
        self._max_routes = option("max_routes", "metrics_max_routes", max_routes)
        groups = option("path_groups", "metrics_path_groups", path_groups or {})
        self._groups = tuple((re.compile(p), t) for p, t in groups.items())
        self._group_status = option("group_status", "metrics_group_status", group_status)
        chosen = option("buckets", "metrics_buckets", buckets)
        skipped = option("skip_paths", "metrics_skip_paths", skip_paths)
        self._skip: RouteTable | None = RouteTable((p, True) for p in skipped) or None
        self._skip_methods = frozenset(option("skip_methods", "metrics_skip_methods", skip_methods))
        labels = option("extra_labels", "metrics_extra_labels", extra_labels or {})
        self._extra: ExtraLabels | None = ExtraLabels(labels, max_label_values) or None
        self._duration_status = option(
            "duration_status", "metrics_duration_status", duration_status
        )
        self._request_size = option("request_size", "metrics_request_size", request_size)
        self._exemplar = exemplar
        self._fast = not multiprocess_enabled()
        self._methods = frozenset(METHODS)
        self._routes: set[str] = {UNMATCHED, OTHER}
        self._cells: dict[tuple[Any, ...], _Cell] = {}
        self._statuses: dict[int, str] = {}
        names = self._extra.names if self._extra is not None else ()
        shape = Shape(names, self._duration_status, self._request_size)

        reg = self.registry
        if self._fast:
            store = self._store = store_for(reg, ns, chosen, shape)
            self._progress = store.progress
            self._duration_bounds = store.duration_bounds
            self._size_bounds = store.size_bounds
            return
        self._requests = shared_counter(
            "http_requests_total", REQUESTS_HELP, shape.counter, registry=reg, namespace=ns
        )
        self._duration = shared_histogram(
            "http_request_duration_seconds",
            DURATION_HELP,
            shape.histogram,
            registry=reg,
            namespace=ns,
            buckets=chosen,
        )
        in_progress = shared_gauge(
            "http_requests_in_progress", PROGRESS_HELP, ("method",), registry=reg, namespace=ns
        )
        self._size = shared_histogram(
            "http_response_size_bytes",
            SIZE_HELP,
            shape.histogram,
            registry=reg,
            namespace=ns,
            buckets=SIZE_BUCKETS,
        )
        self._request_sizes = (
            shared_histogram(
                "http_request_size_bytes",
                REQUEST_SIZE_HELP,
                shape.histogram,
                registry=reg,
                namespace=ns,
                buckets=SIZE_BUCKETS,
            )
            if self._request_size
            else None
        )
        self._in_progress = {m: in_progress.labels(m) for m in (*METHODS, "OTHER")}

    # -- the request path --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a scrape, or run the app and count the request once it ended."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: RequestRecord | None = scope.get(RECORD_KEY)
        if record is None:  # used alone: a record and a responder of our own
            record = RequestRecord.for_scope(scope)
            own = RecordingResponder(record, send, receive)
            receive, send = own.receive, own.send
            from buttress.context import get_trace_id

            record.trace_id = get_trace_id()
        if self._path and record.path == self._path:
            await self.endpoint(scope, send)
            return
        method = record.method
        if (self._skip is not None and self._skip.match(method, scope)) or (
            method in self._skip_methods
        ):
            await self.app(scope, receive, send)
            return
        if method not in self._methods:
            method = "OTHER"
        fast = self._fast
        if fast:
            self._progress[method] += 1
        else:
            self._in_progress[method].inc()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if fast:
                self._progress[method] -= 1
            else:
                self._in_progress[method].dec()
            self._count(scope, record, method, record.final_status(error))

    def _count(self, scope: Scope, record: RequestRecord, method: str, status: int) -> None:
        duration = record.duration()
        route = resolve_route(scope, record)
        if route is None:
            route = UNMATCHED
            for pattern, template in self._groups:
                if pattern.match(record.path):
                    route = template
                    record.route = template  # the access log and Sentry name it the same
                    break
        routes = self._routes
        if route not in routes:
            if len(routes) - 2 >= self._max_routes:
                route = OTHER
            else:
                routes.add(route)
        extra = self._extra.values(scope, record) if self._extra is not None else ()
        key = (method, route, status, *extra) if extra else (method, route, status)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._bind(method, route, status, extra)
        if self._exemplar is exemplar_of:  # the default, inlined: the trace id, if any
            exemplar = {"trace_id": record.trace_id} if record.trace_id is not None else None
        else:
            exemplar = self._exemplar(record) if self._exemplar is not None else None
        if not self._fast:
            _observe(cell, duration, record, exemplar)
            return
        count = cell.count
        count.value += 1
        histogram = cell.duration
        i = bisect_left(self._duration_bounds, duration)
        histogram.buckets[i] += 1
        histogram.sum += duration
        if exemplar is not None:
            now = time.time()
            histogram.exemplars[i] = (exemplar, duration, now)
            count.exemplar = (exemplar, 1.0, now)
        histogram = cell.size
        size = record.sent
        histogram.buckets[bisect_left(self._size_bounds, size)] += 1
        histogram.sum += size
        histogram = cell.request_size
        if histogram is not None:
            size = record.received
            histogram.buckets[bisect_left(self._size_bounds, size)] += 1
            histogram.sum += size

    def _bind(self, method: str, route: str, status: int, extra: tuple[str, ...]) -> _Cell:
        label = self._statuses.get(status)
        if label is None:
            if self._group_status:
                label = f"{status // 100}xx" if 100 <= status <= 599 else "other"
            else:
                label = str(status) if 100 <= status <= 999 else "other"
            self._statuses[status] = label
        counter = (method, route, label, *extra)
        hist = (method, route, label, *extra) if self._duration_status else (method, route, *extra)
        if self._fast:
            store = self._store
            cell = _Cell(store.count(counter), *store.histograms(hist))
        else:
            cell = _Cell(
                self._requests.labels(*counter),
                self._duration.labels(*hist),
                self._size.labels(*hist),
                self._request_sizes.labels(*hist) if self._request_sizes is not None else None,
            )
        key = (method, route, status, *extra)
        self._cells[key] = cell
        return cell


def _observe(
    cell: _Cell, duration: float, record: RequestRecord, exemplar: dict[str, str] | None
) -> None:
    """Many workers: prometheus-client's children write to the workers' files."""
    if exemplar is not None:
        cell.count.inc(exemplar=exemplar)
        cell.duration.observe(duration, exemplar)
    else:
        cell.count.inc()
        cell.duration.observe(duration)
    cell.size.observe(record.sent)
    if cell.request_size is not None:
        cell.request_size.observe(record.received)
