"""The ``/metrics`` endpoint and the many-workers set-up behind it.

# Strategy: a scrape never stalls requests. Encoding a registry at the route cap is
# megabytes of text and, gzipped, most of a second of CPU: it runs in a worker thread,
# and scrapes that arrive while one is being encoded share its bytes. A flood of scrapes
# therefore costs at most one encoding at a time, never one per request, and a scrape
# is never served stale data from before it arrived.
#
# Strategy: many workers. prometheus-client chooses file-backed values when
# ``PROMETHEUS_MULTIPROC_DIR`` is set at import time. Then the endpoint aggregates every
# worker's files on a fresh registry at scrape time. The in-progress gauge uses
# ``livesum``: the sum over live workers only, so a worker killed mid-request does not
# leave a request "in progress" for ever. Files of dead workers' live gauges are removed
# (``mark_process_dead``) at scrape time, since uvicorn's supervisor offers no worker-exit
# hook; counters and histograms of dead workers are kept, so totals never go backwards.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import gzip
import hmac
import os
import shutil
import stat
import tempfile
from typing import Any

from prometheus_client import CollectorRegistry

from buttress._asgi import Scope, Send, get_header, send_json
from buttress._registry import multiprocess_enabled, process_registry
from buttress.config import ConfigError

__all__ = ["MULTIPROC_ENV", "MetricsEndpoint", "prepare_multiprocess_dir"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
        check_multiprocess_dir(path)
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


def check_multiprocess_dir(path: str) -> None:
    """Refuse a ``PROMETHEUS_MULTIPROC_DIR`` the scrape must not trust (``ConfigError``).

    It must be a writable directory, and not writable by other users: every ``.db`` file
    in it is served as metrics, so anyone who can plant one can forge them.
    """
    if not path or not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            [
                f"{MULTIPROC_ENV}={path!r} is not a writable directory; create it "
                f"(mkdir -p {path or '<dir>'}), make it writable by the "
                "server's user and empty it before each start, or unset "
                f"{MULTIPROC_ENV} and buttress run creates a fresh one."
            ]
        )
    if os.stat(path).st_mode & stat.S_IWOTH:
        raise ConfigError(
            [
                f"{MULTIPROC_ENV}={path!r} is writable by every user, so anyone on the "
                "machine could plant metric files that /metrics would serve; use a "
                f"directory only the server's user can write (chmod o-w {path})."
            ]
        )


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


def accepts_gzip(header: bytes | None) -> bool:
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


class _Both:
    """A registry view that collects a stack's registry and then the process-wide one."""

    def __init__(self, first: CollectorRegistry, second: CollectorRegistry) -> None:
        self._first = first
        self._second = second

    def collect(self) -> Any:
        yield from self._first.collect()
        yield from self._second.collect()


class MetricsEndpoint:
    """Answers scrapes of one registry: content negotiation, gzip, an optional bearer token."""

    def __init__(self, registry: CollectorRegistry, *, token: str | None) -> None:
        self.registry = registry
        self._expected = ("Bearer " + token).encode("latin-1") if token else None
        self._multiprocess = multiprocess_enabled()
        #: (content type, gzip) -> the encoding under way, shared by scrapes that join it
        self._running: dict[tuple[str, bool], asyncio.Future[bytes]] = {}

    async def __call__(self, scope: Scope, send: Send) -> None:
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
        zipped = accepts_gzip(get_header(headers, b"accept-encoding"))
        body = await self._body(encoder, content_type, zipped)
        out = [
            (b"content-type", content_type.encode("latin-1")),
            (b"vary", b"Accept-Encoding"),
            (b"cache-control", b"no-store"),
        ]
        if zipped:
            out.append((b"content-encoding", b"gzip"))
        out.append((b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _body(self, encoder: Any, content_type: str, zipped: bool) -> bytes:
        key = (content_type, zipped)
        running = self._running.get(key)
        if running is None:
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(None, self._encode, encoder, zipped)
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    def _encode(self, encoder: Any, zipped: bool) -> bytes:
        if not self._multiprocess:
            _warn_if_one_of_several_workers()
        body: bytes = encoder(self._scrape_registry())
        return gzip.compress(body, compresslevel=6) if zipped else body

    def _scrape_registry(self) -> Any:
        if not self._multiprocess:
            process = process_registry()
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


_checked_workers = False


def sibling_workers() -> int:
    """How many processes, this one included, run the same command under the same parent.

    Under ``uvicorn --workers N``, ``hypercorn --workers N`` or ``granian --workers N`` each
    worker is such a sibling (spawned workers differ only in the numbers of their command
    line, which are ignored) (granian starts them one by one, so this is asked at the first
    scrape, not at start-up). Linux only (``/proc``); 1 where it cannot tell.
    """
    try:
        parent = os.getppid()
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as file:
            mine = _shape(file.read())
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as file:
                    stat_ppid = int(file.read().rpartition(b")")[2].split()[1])
                if stat_ppid != parent:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if _shape(file.read()) == mine:
                        count += 1
            except (OSError, ValueError, IndexError):
                continue
        return max(count, 1)
    except OSError:
        return 1


def _shape(cmdline: bytes) -> bytes:
    """A command line without its numbers: spawned workers differ only in pipe handles."""
    return bytes(c for c in cmdline if not 48 <= c <= 57)


def _warn_if_one_of_several_workers() -> None:
    """Warn once when several workers each answer scrapes with their own counts only."""
    global _checked_workers
    if _checked_workers:
        return
    _checked_workers = True
    workers = sibling_workers()
    if workers > 1:
        import structlog

        structlog.get_logger("buttress.metrics").warning(
            "metrics_without_multiprocess_dir",
            workers=workers,
            message=(
                f"{workers} worker processes serve this app but {MULTIPROC_ENV} is not set: "
                "each scrape answers one worker's counts. Set it to an empty directory "
                "writable by the workers before they start (buttress run --workers does)."
            ),
        )
