"""What each uvicorn worker of ``buttress run`` imports: the user's app, wrapped once."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from buttress._asgi import ASGIApp

APP_ENV = "BUTTRESS_RUN_APP"


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


def create_app() -> ASGIApp:
    """The wrapped app named by ``BUTTRESS_RUN_APP`` (uvicorn calls this as a factory)."""
    from buttress.stack import is_stack, wrap

    app = load_target(os.environ[APP_ENV])
    if is_stack(app):
        return app  # type: ignore[no-any-return]
    return wrap(app)
