"""What ``buttress run`` serves: the user's app (or what its factory returns), wrapped once.

The command checks the target in the supervisor, before any worker starts, so a target
that is not an ASGI app fails there with a message instead of answering 500 to every
request. Each uvicorn worker then calls ``create_app``, which reads the hand-off variable
``BUTTRESS_RUN_APP`` (the target and whether to call it) and resolves the target the
same way.

# Strategy: the development panel is printed by the command, once, in the process that
# holds the terminal; ``wrap()`` prints it too, so it is silenced while the app is
# imported and wrapped here (an app that wraps itself at import time included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import sys
from typing import Any

from buttress._asgi import ASGIApp
from buttress.config import Settings

APP_ENV = "BUTTRESS_RUN_APP"

__all__ = [
    "APP_ENV",
    "Served",
    "TargetError",
    "create_app",
    "hand_off",
    "load_target",
    "resolve",
    "resolve_app",
]


class TargetError(ValueError):
    """``MODULE:ATTR`` names something that is neither an ASGI app nor a factory of one."""


def load_target(target: str) -> Any:
    """Import ``module:attr`` (dotted attributes allowed) with the working directory on the path."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("expected MODULE:ATTR, such as 'myapp.main:app'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _positional(obj: Any) -> tuple[int, int] | None:
    """(required, accepted) positional arguments of ``obj``, or None when unknowable."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    required = accepted = 0
    for param in sig.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            accepted = 3
        elif param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            accepted += 1
            required += param.default is param.empty
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            required += 1  # cannot be called as app(scope, receive, send) nor as factory()
    return required, accepted


def _is_asgi(obj: Any) -> bool:
    """Whether ``obj`` can be called as ``app(scope, receive, send)`` (an ASGI 3 app)."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    counts = _positional(obj)
    return counts is None or counts[0] <= 3 <= counts[1]


def _describe(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__qualname__} (serve an instance, or a factory of one)"
    if inspect.isroutine(obj):
        counts = _positional(obj)
        if counts is not None:
            n = counts[0]
            return f"a function that takes {n} required argument{'s' if n != 1 else ''}"
        return "a function"
    text = repr(obj)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = type(obj).__name__
    return f"{text} ({'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind})"


def resolve_app(obj: Any, target: str, *, factory: bool) -> tuple[ASGIApp, bool]:
    """The ASGI app ``target`` names, and whether it was called as a factory to get it.

    With ``factory`` the target is called with no arguments; without it the target is
    served when it is an ASGI app, and called when it plainly is a factory (a callable
    that takes no arguments). Raises ``TargetError`` saying what was found instead.
    """
    expected = "expected an ASGI app (scope, receive, send) or a factory called with no arguments"
    if not factory and _is_asgi(obj):
        return obj, False
    counts = _positional(obj) if callable(obj) else None
    if not callable(obj) or (inspect.isclass(obj) and not factory):
        raise TargetError(f"{target} is {_describe(obj)}: {expected}.")
    if counts is not None and counts[0] > 0:
        hint = "; it looks like the app itself: drop --factory" if _is_asgi(obj) else ""
        raise TargetError(f"{target} is {_describe(obj)}: {expected}{hint}.")
    app = obj()  # an exception raised inside the factory keeps its traceback
    if inspect.isawaitable(app):
        close = getattr(app, "close", None)
        if close is not None:
            close()  # never awaited: close it so Python does not warn about it
        raise TargetError(
            f"{target}() returned an awaitable; a factory must be a plain (not async) "
            "function that returns the app."
        )
    if not _is_asgi(app):
        raise TargetError(f"{target}() returned {_describe(app)}: {expected}.")
    return app, True


def _panel_silenced(panels: list[Settings]) -> contextlib.AbstractContextManager[None]:
    """Keep ``wrap()`` from printing the development panel; collect its settings instead."""
    from buttress.devmode import collect_summaries

    return collect_summaries(panels)


@dataclasses.dataclass
class Served:
    """What ``buttress run`` serves: the app, whether a factory made it, its panels."""

    app: ASGIApp
    factory: bool
    #: Settings of each development panel ``wrap()`` would have printed (an app that
    #: wraps itself at import time prints one with its own settings).
    panels: list[Settings]

    def wrap(self) -> ASGIApp:
        """The app in the buttress stack (an app that already is a stack is kept as it is)."""
        from buttress.stack import is_stack, wrap

        if is_stack(self.app):
            return self.app
        with _panel_silenced(self.panels):
            return wrap(self.app)

    def panel(self, settings: Settings) -> Settings | None:
        """The settings to show in the development panel, or None when there is none."""
        from buttress.stack import is_stack

        if self.panels:
            return self.panels[0]
        if is_stack(self.app):  # wrapped by the app itself, not in development mode
            return None
        return settings if settings.development else None


def resolve(target: str, *, factory: bool) -> Served:
    """Import ``target`` and resolve it to an ASGI app (see ``resolve_app``), panel silenced."""
    panels: list[Settings] = []
    with _panel_silenced(panels):
        app, called = resolve_app(load_target(target), target, factory=factory)
    return Served(app, called, panels)


def hand_off(target: str, *, factory: bool) -> str:
    """The value of ``BUTTRESS_RUN_APP`` that tells each worker what to serve."""
    return json.dumps({"target": target, "factory": factory})


def create_app() -> ASGIApp:
    """The wrapped app named by ``BUTTRESS_RUN_APP`` (uvicorn calls this as a factory)."""
    raw = os.environ[APP_ENV]
    spec = json.loads(raw) if raw.startswith("{") else {"target": raw, "factory": False}
    return resolve(str(spec["target"]), factory=bool(spec["factory"])).wrap()
