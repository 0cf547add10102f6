"""Logging set-up (structlog and the standard library, one format) and the access-log event.

# Strategy: structlog loggers write straight to the stream, with a short processor chain
# (context, level, logger name, timestamp, exception, renderer), because the access log is
# on every request's path and going through the standard library would double its cost.
# Standard-library records (uvicorn, sentry_sdk, limits, the app's own loggers) are rendered
# by the same processors through ``ProcessorFormatter``, so one process writes one format.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, TextIO

import orjson
import structlog
from structlog.dev import ConsoleRenderer, RichTracebackFormatter
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from buttress._asgi import RequestInfo, Scope
from buttress.config import Settings

__all__ = ["AccessLogger", "LogThrottle", "configure_logging"]

_HANDLER_MARK = "_buttress_handler"
_USER_AGENT_MAX = 512


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows its name, so ``logger`` appears in every event."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _LoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if "logger" not in event_dict:
        record = event_dict.get("_record")
        name = record.name if record is not None else getattr(logger, "name", None)
        if name:
            event_dict["logger"] = name
    return event_dict


def _drop_message(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A standard-library record's formatted ``message`` repeats its ``event``."""
    event_dict.pop("message", None)
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    """JSON with orjson; text orjson refuses (lone surrogates) falls back to escaped stdlib JSON."""
    try:
        return orjson.dumps(obj, default=repr).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, default=repr, ensure_ascii=True)


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"}


def _escape_controls(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Keep console lines whole: control characters in values are shown escaped."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable() and key != "exception":
            event_dict[key] = value.translate(_CONTROL)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer_chain(settings: Settings) -> list[Processor]:
    if settings.effective_log_format == "json":
        # Locals never reach a JSON log: production output is shipped and kept.
        dict_tb = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        return [dict_tb, structlog.processors.JSONRenderer(serializer=_dumps)]
    formatter = RichTracebackFormatter(
        show_locals=settings.development, width=120, color_system="truecolor"
    )
    return [
        _escape_controls,
        ConsoleRenderer(colors=True, exception_formatter=formatter),
    ]


def configure_logging(settings: Settings | None = None, *, stream: TextIO | None = None) -> None:
    """Send structlog and standard-library logging to ``stream`` (stdout) in one format.

    JSON lines in production, a coloured console with rich tracebacks in development.
    Calling it again replaces the previous set-up; it never adds a second handler.
    """
    s = settings or Settings.from_env()
    out = stream if stream is not None else sys.stdout
    level = getattr(logging, s.log_level)
    shared = _shared_processors()
    render = _renderer_chain(s)
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_LoggerFactory(out),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_message],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own handlers; route its records through ours instead, and
    # silence its access log: buttress writes one access line per request itself.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


class AccessLogger:
    """Writes the one access-log event of a request; levels follow the status class."""

    def __init__(self) -> None:
        log = structlog.get_logger("buttress.access").bind()
        self._info = log.info
        self._warning = log.warning
        self._error = log.error

    def log(self, scope: Scope, info: RequestInfo, sent: int, error: BaseException | None) -> None:
        from buttress._routes import resolve_route
        from buttress.context import elapsed_ms

        status = info.status
        if status == 0:
            # No response started: the server answers 500, or nobody hears (a client that
            # went away cancels the task); 499 is the customary code for the latter.
            status = 499 if isinstance(error, _cancelled()) else 500
        user_agent = None
        for key, value in scope.get("headers") or ():
            if key == b"user-agent":
                user_agent = value[:_USER_AGENT_MAX].decode("latin-1")
                break
        emit = self._info if status < 400 else self._warning if status < 500 else self._error
        emit(
            "request",
            route=resolve_route(scope, info),
            status=status,
            duration_ms=round(elapsed_ms(info), 3),
            user_agent=user_agent,
            response_bytes=sent,
        )


def _cancelled() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError


class LogThrottle:
    """Lets a repeated warning through at most once per ``interval`` seconds.

    Under attack, one line per rejected request would turn the log into the attack's
    amplifier; the line that does pass says how many were suppressed since the last one.
    """

    def __init__(self, interval: float = 10.0) -> None:
        import time

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
