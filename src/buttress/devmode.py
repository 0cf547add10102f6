"""Development mode: a start-up panel that says what the stack is doing.

With ``BUTTRESS_ENV=development``, ``wrap()`` prints this panel once, so a developer sees
at a glance which layers are on, where the metrics are, which limits apply and whether
errors go to Sentry, instead of discovering it from a surprising 429.

It also holds the console traceback formatter ``configure_logging`` uses: short (the
user's frames, library frames counted, not shown), with the user's locals in development,
and drawn off the event loop. Locals never reach JSON output.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from buttress.config import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.panel import Panel

__all__ = [
    "DevTraceback",
    "OffLoopRenderer",
    "print_startup_summary",
    "startup_summary",
    "wait_for_tracebacks",
]


def _sentry_active() -> bool:
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


def _rows(settings: Settings) -> list[tuple[str, str]]:
    s = settings
    rows: list[tuple[str, str]] = [("env", s.env)]
    console_hint = " (rich tracebacks with locals)" if s.development else ""
    log = f"{s.effective_log_format}, level {s.log_level}{console_hint}"
    rows.append(("logs", log))
    access = "off"
    if s.access_log:
        access = "on"
        if s.access_log_exclude:
            access += ", except " + ", ".join(s.access_log_exclude)
    rows.append(("access log", access))
    rows.append(("request id", f"header {s.request_id_header}"))
    proxies = ", ".join(str(n) for n in s.trusted_proxies) or "none (socket peer is the client)"
    rows.append(("trusted proxies", proxies))
    if not s.metrics:
        metrics = "off"
    elif not s.metrics_path:
        metrics = "on, no endpoint"
    else:
        metrics = f"GET {s.metrics_path}" + (" (bearer token)" if s.metrics_token else "")
    rows.append(("metrics", metrics))
    rows.append(("errors", f"{s.error_format} format" + _mapped(s)))
    if _sentry_active():
        codes = _ranges(s.sentry_status_codes)
        rows.append(("sentry", f"on, statuses {codes}"))
    else:
        rows.append(("sentry", "off (set SENTRY_DSN to report errors)"))
    rows.append(("rate limits", _limits(s)))
    rows.append(
        (
            "retries",
            f"{s.retry_attempts} attempts, waits {s.retry_wait_min:g}-{s.retry_wait_max:g} s",
        )
    )
    return rows


def _mapped(s: Settings) -> str:
    n = len(s.exception_map)
    return f", {n} mapped exception{'s' if n != 1 else ''}" if n else ""


def _ranges(codes: frozenset[int]) -> str:
    ordered = sorted(codes)
    if not ordered:
        return "none"
    parts: list[str] = []
    start = prev = ordered[0]
    for code in [*ordered[1:], None]:
        if code is not None and code == prev + 1:
            prev = code
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if code is not None:
            start = prev = code
    return ",".join(parts)


def _limits(s: Settings) -> str:
    if not s.rate_limit and not s.rate_limits:
        return "off"
    parts = []
    if s.rate_limit:
        key = s.rate_limit_key if isinstance(s.rate_limit_key, str) else "custom key"
        parts.append(f"{s.rate_limit} per {key}")
    parts.extend(f"{key}: {value}" for key, value in s.rate_limits.items())
    storage = s.redacted()["BUTTRESS_RATE_LIMIT_STORAGE"]
    return "; ".join(parts) + f" ({s.rate_limit_strategy}, {storage})"


def startup_summary(settings: Settings) -> Panel:
    """A rich panel listing what the stack does with ``settings``."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for name, value in _rows(settings):
        table.add_row(name, Text(value))  # Text: no markup in values
    return Panel(table, title="buttress", subtitle="development mode", expand=False)


#: While ``collect_summaries`` runs: where panels go instead of being printed.
_collecting: list[Settings] | None = None


@contextlib.contextmanager
def collect_summaries(into: list[Settings]) -> Iterator[None]:
    """Collect the settings of panels ``wrap()`` would print, instead of printing them.

    ``buttress run`` imports (and maybe wraps) the app in each worker; it prints the panel
    once itself, so a wrap at import time must not print one per worker.
    """
    global _collecting
    before, _collecting = _collecting, into
    try:
        yield
    finally:
        _collecting = before


def print_startup_summary(settings: Settings, *, console: Console | None = None) -> None:
    """Print the start-up panel to ``console`` (default: standard error)."""
    if _collecting is not None:
        _collecting.append(settings)
        return
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    console.print(startup_summary(settings))


# --- development tracebacks -------------------------------------------------------------
#
# Strategy: a development traceback is for the developer's own code. Rich's full rendering
# of a request's traceback under a framework is ~25 frames, most of them starlette, anyio,
# the server and buttress, each with source and (with locals on) a pretty-printed repr of
# every local: over a thousand lines and seconds of work, with the user's frame near the
# end. Library frames (installed packages, the standard library, buttress) are left out and
# counted in a note; locals are extracted for the user's frames only. The rendering of a
# traceback logged on an event loop runs on a worker thread (``OffLoopRenderer``), so a
# slow ``repr`` in a local never holds up the other requests the loop serves.


def _library_prefixes() -> tuple[str, ...]:
    import os
    import site
    import sysconfig

    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    paths.add(site.getusersitepackages())
    paths.add(os.path.dirname(__file__))  # buttress itself
    return tuple(os.path.join(os.path.realpath(p), "") for p in paths if p)


class DevTraceback:
    """A ``structlog`` exception formatter: rich, short, with the user's frames first.

    Frames of installed packages, the standard library and buttress are hidden (a note
    says how many); ``show_locals`` shows the local variables of the user's frames only.
    """

    def __init__(self, *, show_locals: bool, colors: bool, width: int = 120) -> None:
        self.show_locals = show_locals
        self.colors = colors
        self.width = width
        self._library = _library_prefixes()

    def _is_library(self, filename: str) -> bool:
        import os

        return filename.startswith("<") or os.path.realpath(filename).startswith(self._library)

    def __call__(self, sio: Any, exc_info: Any) -> None:
        from rich.console import Console
        from rich.traceback import Traceback

        trace = Traceback.extract(*exc_info, show_locals=False)
        for stack, exc in zip(trace.stacks, _chain(exc_info[1]), strict=False):
            self._trim(stack, exc)
        sio.write("\n")
        console = Console(
            file=sio,
            width=self.width,
            color_system="truecolor" if self.colors else None,
            force_terminal=self.colors,
            no_color=not self.colors,
        )
        console.print(
            Traceback(trace, width=self.width, extra_lines=2, show_locals=self.show_locals)
        )

    def _trim(self, stack: Any, exc: BaseException) -> None:
        frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
        frames = [f for f in frames if not f.f_locals.get("_rich_traceback_omit", False)]
        if len(frames) != len(stack.frames):  # not the frames rich saw: leave it whole
            return
        user = [not self._is_library(f.f_code.co_filename) for f in frames]
        # The user's frames, and the frame that raised; all of the last few without any.
        keep = [i for i, mine in enumerate(user) if mine] or list(range(len(frames)))[-3:]
        if keep and keep[-1] != len(frames) - 1:
            keep.append(len(frames) - 1)
        if self.show_locals:
            from rich import pretty

            for i in keep:
                if user[i]:
                    stack.frames[i].locals = {
                        key: pretty.traverse(value, max_length=10, max_string=80, max_depth=3)
                        for key, value in frames[i].f_locals.items()
                        if not key.startswith("__")
                        and not (inspect.isfunction(value) or inspect.isclass(value))
                    }
        hidden = len(frames) - len(keep)
        stack.frames = [stack.frames[i] for i in keep]
        if hidden:
            plural = "s" if hidden != 1 else ""
            stack.notes = [*stack.notes, f"{hidden} library frame{plural} hidden"]


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts, in the order rich lists their stacks."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            exc = cause
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc = exc.__context__
        else:
            exc = None


class OffLoopRenderer:
    """A renderer that draws events carrying an exception on a worker thread.

    Called on a thread running an event loop (a request's coroutine), an event with
    ``exc_info`` is handed, with its exception resolved, to one worker thread that renders
    it and writes it to ``stream``; the caller gets ``""``, which buttress's writers skip.
    Anywhere else the event is rendered in place. The worker is joined when the interpreter
    exits normally, so a traceback being drawn at shutdown is still written.
    """

    def __init__(self, renderer: Any, stream: Any) -> None:
        self._renderer = renderer
        self._stream = stream

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        exc_info = event_dict.get("exc_info")
        if not exc_info or not _on_event_loop():
            return self._renderer(logger, method_name, event_dict)
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        elif not isinstance(exc_info, tuple):
            exc_info = sys.exc_info()
        event_dict["exc_info"] = exc_info
        _worker().submit(self._render, logger, method_name, event_dict)
        return ""

    def _render(self, logger: Any, method_name: str, event_dict: Any) -> None:
        import structlog

        try:
            text = self._renderer(logger, method_name, event_dict)
        except Exception as exc:  # never lose the event because its rendering failed
            text = f"{event_dict.get('event')!s} (traceback not rendered: {exc!r})"
        structlog.WriteLogger(self._stream).msg(text)


def _on_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_pool: list[Any] = []
_pool_lock = threading.Lock()


def _worker() -> Any:
    """The one thread that renders tracebacks (one, so they come out in order)."""
    if not _pool:
        from concurrent.futures import ThreadPoolExecutor

        with _pool_lock:
            if not _pool:
                _pool.append(ThreadPoolExecutor(1, thread_name_prefix="buttress-traceback"))
    return _pool[0]


def wait_for_tracebacks() -> None:
    """Block until every traceback handed to the worker thread so far is written."""
    if _pool:
        _pool[0].submit(lambda: None).result()
