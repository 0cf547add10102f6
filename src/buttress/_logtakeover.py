"""Other code's logging set-up that would print a second copy, or a second format.

``configure_logging`` calls ``take_over()`` so that every line a process writes goes out
once, in buttress's format:

- servers: uvicorn and granian install console handlers on their loggers at start-up
  (before the app is imported): they are removed and the loggers propagate to the root.
  hypercorn installs its handler on ``hypercorn.error`` lazily, after the app is imported,
  so a logger filter (which it leaves alone) hands each record to the parent loggers
  itself and skips hypercorn's handler. Their access logs are silenced: buttress writes one
  access line per request.
- frameworks: Django's and Litestar's console handlers (on ``django``, ``django.server``,
  ``litestar`` and, for Litestar, the root logger) are removed; their loggers propagate.
- other console output on the root logger: a ``StreamHandler`` to stdout or stderr (as
  ``logging.basicConfig`` adds) or a handler that forwards to loguru (its documented
  ``InterceptHandler`` recipe) would write every standard-library record a second time:
  it is removed, and a warning names it. Other root handlers (files, OpenTelemetry) stay.
- a traceback a server logs as message text (granian) becomes the event's ``exception``.
- ``warnings.warn`` is logged (``py.warnings``) as one event instead of raw text.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

from structlog.typing import EventDict, WrappedLogger

#: Set on an exception buttress has already logged (or knows is a client disconnect), so
#: the server's own "Exception in ASGI application" traceback of it is not a duplicate.
LOGGED_MARK = "__buttress_logged__"

_PROPAGATE = ("uvicorn", "uvicorn.error", "_granian", "django", "django.server", "litestar")
_SILENCE = ("uvicorn.access", "granian.access", "hypercorn.access")
_REROUTE = ("hypercorn.error",)
_DROP_LOGGED = ("uvicorn.error", "hypercorn.error")


class _ServerErrors(logging.Filter):
    """On a server's error logger: drop what buttress logged; optionally skip its handlers.

    With ``reroute``, the record goes to the parent loggers' handlers (as propagation
    would) and not to the handlers on the logger itself, whenever the server sets them.
    """

    def __init__(self, reroute: bool) -> None:
        super().__init__()
        self.reroute = reroute

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        exc = exc_info[1] if exc_info else None
        if exc is not None and getattr(exc, LOGGED_MARK, False):
            return False
        if not self.reroute:
            return True
        logger = logging.getLogger(record.name)
        if logger.propagate and logger.parent is not None:
            logger.parent.handle(record)
        return False


def _silence(record: logging.LogRecord) -> bool:
    return False


def _is_console(handler: logging.Handler) -> bool:
    """A handler that prints to the process's stdout or stderr."""
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
        stream = getattr(handler, "stream", None)
        return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return False


def _is_framework(handler: logging.Handler) -> bool:
    """A console handler a framework installed by default (Litestar's queue handler)."""
    return type(handler).__module__.startswith("litestar.")


def _forwards_to_loguru(handler: logging.Handler) -> bool:
    """A handler that hands records to loguru (the ``InterceptHandler`` recipe)."""
    loguru = sys.modules.get("loguru")
    if loguru is None:
        return False
    emit = getattr(type(handler), "emit", None)
    names = list(getattr(emit, "__globals__", {}).values())
    names += [cell.cell_contents for cell in getattr(emit, "__closure__", None) or ()]
    return any(value is loguru.logger for value in names)


def _is_foreign_console(handler: logging.Handler) -> bool:
    """A handler whose output would be a second copy of ours on the console."""
    return _is_console(handler) or _is_framework(handler) or _forwards_to_loguru(handler)


def take_over(ours: logging.Handler) -> list[str]:
    """Make ``ours`` the one console writer of every logger (see the module docstring).

    Returns the names of the root handlers the app (not a framework) set up that it
    removed, for a warning.
    """
    root = logging.getLogger()
    removed = []
    for handler in list(root.handlers):
        if handler is not ours and _is_foreign_console(handler):
            root.removeHandler(handler)
            if not _is_framework(handler):
                removed.append(type(handler).__qualname__)
    for name in _PROPAGATE:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if name.startswith(("uvicorn", "_granian")) or _is_foreign_console(handler):
                logger.removeHandler(handler)
        logger.propagate = True
    for name in _SILENCE:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        if _silence not in logger.filters:
            logger.addFilter(_silence)
    for name in _DROP_LOGGED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ServerErrors) for f in logger.filters):
            logger.addFilter(_ServerErrors(reroute=name in _REROUTE))
    _capture_warnings()
    return removed


# --- warnings ---------------------------------------------------------------------------

_original_showwarning: list[Any] = []


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    if file is not None:  # printed to a file the caller chose: leave it there
        _original_showwarning[0](message, category, filename, lineno, file, line)
        return
    logging.getLogger("py.warnings").warning(
        "%s", message, extra={"category": category.__name__, "location": f"{filename}:{lineno}"}
    )


def _capture_warnings() -> None:
    if warnings.showwarning is not _showwarning:
        _original_showwarning[:] = [warnings.showwarning]
        warnings.showwarning = _showwarning


# --- tracebacks logged as text ----------------------------------------------------------

_TRACEBACK = "Traceback (most recent call last):\n"
_FRAME = re.compile(r'^  File "(.*)", line (\d+), in (.*)$', re.MULTILINE)
_CAUSE = "The above exception was the direct cause of the following exception:"


def text_traceback(structured: bool) -> Any:
    """A pre-chain processor: a traceback in a record's message becomes its ``exception``.

    ``structured`` parses it into the shape ``ExceptionDictTransformer`` writes (JSON);
    otherwise the text is kept (the console prints it under the event).
    """

    def split(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event = event_dict.get("event")
        if not isinstance(event, str) or _TRACEBACK not in event or "exc_info" in event_dict:
            return event_dict
        record = event_dict.get("_record")
        if record is not None and record.exc_info:
            return event_dict
        head = event[: event.index(_TRACEBACK)]
        event_dict["event"] = head.rstrip() or "exception"
        text = event[len(head) :]
        event_dict["exception"] = _parse(text) if structured else text
        return event_dict

    return split


def _parse(text: str) -> list[dict[str, Any]] | str:
    parts = text.split(_TRACEBACK)[1:]
    out: list[dict[str, Any]] = []
    for part in parts:
        frames = [
            {"filename": f, "lineno": int(n), "name": name} for f, n, name in _FRAME.findall(part)
        ]
        tail = [ln for ln in part.splitlines() if ln and not ln.startswith(" ")]
        if not frames or not tail:
            return text
        message = "\n".join(tail)
        # Text order is oldest first: a part followed by the "direct cause" separator is
        # the cause of the next one.
        is_cause = _CAUSE in message
        for separator in (_CAUSE, "During handling of the above exception"):
            message = message.split(separator)[0]
        exc_type, _, exc_value = message.strip().partition(": ")
        entry = {"exc_type": exc_type, "exc_value": exc_value, "is_cause": is_cause}
        out.append({**entry, "frames": frames})
    return out[::-1]  # the exception raised last first, as structlog lists them
