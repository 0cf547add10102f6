"""Logging set-up (structlog and the standard library, one format) and the access-log event.

# Strategy: structlog loggers write straight to the stream, with a short processor chain
# (context, level, logger name, timestamp, exception, renderer), because the access log is
# on every request's path and going through the standard library would double its cost.
# Standard-library records (uvicorn, sentry_sdk, limits, the app's own loggers) are rendered
# by the same processors through ``ProcessorFormatter``, so one process writes one format.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson
import structlog
from structlog.dev import ConsoleRenderer
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from buttress._asgi import Scope
from buttress._logtakeover import LOGGED_MARK, take_over, text_traceback
from buttress._logtime import LogThrottle, UtcClock
from buttress._request import RequestRecord
from buttress._scrub import scrub_log_event
from buttress.config import ACCESS_DEFAULT_FIELDS, ACCESS_FIELDS, option

__all__ = ["AccessLogger", "LogThrottle", "configure_logging"]

_HANDLER_MARK = "_buttress_handler"
_USER_AGENT_MAX = 512


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows its name, so ``logger`` appears in every event."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name

    def msg(self, message: str) -> None:
        if message:  # "": the event is being rendered off the event loop (devmode)
            super().msg(message)

    log = debug = info = warn = warning = fatal = failure = err = error = critical = exception = msg


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler; like its writer above, it skips an event rendered elsewhere."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if text:
                with self.lock:  # type: ignore[union-attr]
                    self.stream.write(text + self.terminator)
                    self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _LoggerFactory:
    """Makes the loggers of a ``configure_logging`` set-up; remembers how it renders."""

    def __init__(self, file: TextIO, json_format: bool = True, level: int = logging.INFO) -> None:
        self._file = file
        self.json_format = json_format
        self.level = level

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
    """A record's ``message`` (and uvicorn's ``color_message``) repeat its ``event``.

    ``asctime`` is what another formatter (hypercorn's) left on a record it formatted first.
    """
    event_dict.pop("message", None)
    event_dict.pop("color_message", None)
    event_dict.pop("asctime", None)
    event = event_dict.get("event")
    if isinstance(event, str) and event.endswith("\n"):  # uvicorn's "Exception in ASGI..."
        event_dict["event"] = event.rstrip()
    return event_dict


# Characters valid in JSON that still break a log line: C1 controls (U+0085 is a newline to
# some viewers), the line and paragraph separators, and the bidi marks and overrides that
# make a line read differently than it is stored (U+202E).
_UNSAFE = [*range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029]
_UNSAFE += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_UNSAFE_TEXT = re.compile("[" + "".join(chr(c) for c in _UNSAFE) + "]")
_UNSAFE_UTF8 = re.compile(b"|".join(re.escape(chr(c).encode()) for c in _UNSAFE))


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _json_escape_utf8(match: re.Match[bytes]) -> bytes:
    return f"\\u{ord(match.group().decode()):04x}".encode()


def _dumps(obj: Any, **_: Any) -> str:
    """JSON with orjson; text orjson refuses (lone surrogates) falls back to escaped stdlib JSON."""
    try:
        text = orjson.dumps(obj, default=repr).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, default=repr, ensure_ascii=True)
    if not text.isascii():  # the unsafe characters occur only inside JSON strings
        text = _UNSAFE_TEXT.sub(_json_escape, text)
    return text


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127, *range(0x80, 0xA0))}
_CONTROL |= {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0xA0}


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
        scrub_log_event,  # the request's credentials never reach a line (buttress._scrub)
    ]


def _renderer_chain(
    log_format: str, show_locals: bool, *, colors: bool = False, stream: TextIO | None = None
) -> list[Processor]:
    if log_format == "json":
        # Locals never reach a JSON log: production output is shipped and kept.
        dict_tb = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        return [dict_tb, structlog.processors.JSONRenderer(serializer=_dumps)]
    from buttress.devmode import DevTraceback, OffLoopRenderer

    formatter = DevTraceback(show_locals=show_locals, colors=colors)
    renderer = ConsoleRenderer(colors=colors, exception_formatter=formatter)
    return [
        _escape_controls,
        OffLoopRenderer(renderer, stream if stream is not None else sys.stdout),
    ]


def _colors(stream: TextIO) -> bool:
    """Colour on a terminal; ``NO_COLOR`` and ``FORCE_COLOR`` (no-color.org) decide first.

    These are the terminal's conventions (rich reads them too), not buttress settings.
    """
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def configure_logging(
    *,
    level: str = "INFO",
    log_format: str = "json",
    show_locals: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send structlog and standard-library logging to ``stream`` (stdout) in one format.

    ``log_format`` is ``"json"`` (one JSON object per line, for production) or
    ``"console"`` (coloured on a terminal, with short rich tracebacks of the app's own
    frames; ``show_locals`` adds their local variables, for development only: locals never
    reach JSON output). Calling it again replaces the previous set-up; it never adds a
    second handler. The servers' and frameworks' own console handlers (uvicorn, hypercorn,
    granian, Django, Litestar), a ``basicConfig`` or loguru handler on the root logger,
    and ``warnings.warn`` are routed through it, so each line is written once.
    """
    level_name = option("level", "log_level", level)
    log_format = option("log_format", "log_format", log_format) or "json"
    out = stream if stream is not None else sys.stdout
    level_no = getattr(logging, level_name)
    shared = _shared_processors()
    render = _renderer_chain(log_format, show_locals, colors=_colors(out), stream=out)
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_LoggerFactory(out, log_format == "json", level_no),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.ExtraAdder(),
            _drop_message,
            text_traceback(structured=log_format == "json"),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    removed = take_over(handler)
    if removed:
        structlog.get_logger("buttress").warning(
            "replaced_root_handlers",
            handlers=removed,
            message=(
                "configure_logging removed root handlers that printed every standard-library "
                "record a second time; set BUTTRESS_CONFIGURE_LOGGING=false (or "
                "wrap(app, configure_logging=False)) to keep your own logging set-up."
            ),
        )


def mark_logged(exc: BaseException) -> None:
    """Mark ``exc`` as logged by buttress (see ``LOGGED_MARK``)."""
    with contextlib.suppress(AttributeError, TypeError):  # an exception type with __slots__
        setattr(exc, LOGGED_MARK, True)


class AccessLogger:
    """Writes the one access-log event of a request; levels follow the status class.

    # Strategy: when buttress configured logging for JSON itself, the access line is
    # rendered directly (the same keys, values and order structlog would write) instead of
    # through the processor chain: it is the one event on every request's path, and the
    # chain's generic work (bound-logger dispatch, ``datetime`` stamps) is most of its cost.
    # Under any other logging set-up the event goes through structlog like any other.
    """

    #: Fields written unless ``fields`` says otherwise; ``query``, ``http_version``,
    #: ``referer`` and ``request_bytes`` are there to choose too.
    DEFAULT_FIELDS = ACCESS_DEFAULT_FIELDS
    FIELDS = ACCESS_FIELDS

    def __init__(
        self, *, fields: Iterable[str] = DEFAULT_FIELDS, client_error_level: str = "warning"
    ) -> None:
        from buttress._routes import resolve_route

        self._resolve = resolve_route
        chosen = tuple(fields)
        unknown = [f for f in chosen if f not in self.FIELDS]
        if unknown:
            raise ValueError(f"access log fields {unknown!r} are not among {self.FIELDS!r}")
        self._fields = frozenset(chosen)
        self._standard = chosen == self.DEFAULT_FIELDS
        self._client_error = client_error_level
        log = structlog.get_logger("buttress.access").bind()
        self._emit = {"info": log.info, "warning": log.warning, "error": log.error}
        factory = structlog.get_config().get("logger_factory")
        self._direct: _DirectWriter | None = None
        if isinstance(factory, _LoggerFactory) and factory.json_format:
            self._direct = _DirectWriter(factory._file, factory.level)
        #: Levels the direct writer drops (its level is fixed when logging is configured).
        self._muted = frozenset(
            level
            for level in _LEVELS
            if self._direct is not None and not self._direct.enabled(level)
        )

    def log(self, scope: Scope, record: RequestRecord, error: BaseException | None) -> None:
        """Write the access event of a finished request (its status decided on the record)."""
        status = record.final_status(error)
        level = "info" if status < 400 else self._client_error if status < 500 else "error"
        if level in self._muted:
            return
        user_agent = referer = None
        for key, value in scope.get("headers") or ():
            if key == b"user-agent":
                user_agent = value[:_USER_AGENT_MAX].decode("latin-1")
            elif key == b"referer":
                referer = value[:_USER_AGENT_MAX].decode("latin-1")
        event: dict[str, Any] = {
            # One word for "no route matched", in the access log as in the metrics.
            "route": self._resolve(scope, record) or "<unmatched>",
            "status": status,
            # microseconds, as milliseconds with 3 decimals (4x cheaper than round(x, 3))
            # (record.duration(), inlined)
            "duration_ms": int(((record.end or time.perf_counter()) - record.start) * 1e6 + 0.5)
            / 1000,
            "user_agent": user_agent,
            "response_bytes": record.sent,
        }
        if not self._standard:
            event = self._chosen(event, scope, record, referer)
        if self._direct is not None:
            self._direct.write(event, level)
            return
        self._emit[level]("request", **event)

    def _chosen(
        self, event: dict[str, Any], scope: Scope, record: RequestRecord, referer: str | None
    ) -> dict[str, Any]:
        fields = self._fields
        if "query" in fields:
            from buttress._scrub import masked_query

            raw = scope.get("query_string", b"").decode("latin-1")
            event["query"] = masked_query(raw, True, (), set()) if raw else ""
        if "http_version" in fields:
            event["http_version"] = scope.get("http_version")
        if "referer" in fields:
            event["referer"] = referer
        if "request_bytes" in fields:
            event["request_bytes"] = record.received
        return {key: value for key, value in event.items() if key in fields}


class _DirectWriter:
    """Renders an access event to a JSON line exactly as the configured chain would.

    When the stream is a real file (stdout in a container), the line goes out with one
    ``os.write`` of the bytes orjson made: no text encoding, no buffer, no lock. Every other
    writer of the stream (structlog's, the standard library's handler) flushes after each
    line, so lines never interleave.
    """

    def __init__(self, file: TextIO, level: int) -> None:
        self._file = file
        self._fd: int | None = None
        try:
            file.flush()
            self._fd = file.fileno()
        except (AttributeError, OSError, ValueError):  # StringIO and friends: no descriptor
            self._fd = None
        self._lock = threading.Lock()
        self._level = level
        self._clock = UtcClock()

    def enabled(self, level: str) -> bool:
        """Whether a line at ``level`` passes the configured log level."""
        return _LEVELS[level] >= self._level

    def write(self, event: dict[str, Any], level: str) -> None:
        event["event"] = "request"
        # Every variable of the context, as structlog's ``merge_contextvars`` reads them:
        # its order is the context's, so the line's keys come in the chain's order.
        # (Reading structlog's own table instead costs less but orders the keys by when
        # each was first bound: tests/test_logs.py checks the order.)
        for var in contextvars.copy_context():
            name = var.name
            if name.startswith("structlog_"):
                value = var.get()
                if value is not Ellipsis:
                    event.setdefault(name[10:], value)
        event["level"] = level
        event["logger"] = "buttress.access"
        event["timestamp"] = self._clock.now()
        try:
            line = orjson.dumps(event, default=repr, option=orjson.OPT_APPEND_NEWLINE)
        except (TypeError, orjson.JSONEncodeError):
            line = (json.dumps(event, default=repr, ensure_ascii=True) + "\n").encode()
        if not line.isascii():
            line = _UNSAFE_UTF8.sub(_json_escape_utf8, line)
        fd = self._fd
        if fd is not None:
            written = os.write(fd, line)
            while written < len(line):  # a signal or a full pipe cut the write short
                written += os.write(fd, line[written:])
            return
        with self._lock:
            self._file.write(line.decode())
            self._file.flush()


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
