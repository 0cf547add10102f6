"""An app for server subprocesses: ``TEST_FRAMEWORK`` picks the framework (default starlette).

``app`` is the bare app (``buttress run tests.served:app`` wraps it); ``wrapped`` is already
a buttress stack (``uvicorn tests.served:wrapped``).
"""

from __future__ import annotations

import os

import buttress
from tests.apps import build

app = build(os.environ.get("TEST_FRAMEWORK", "starlette"))
wrapped = (
    buttress.wrap(build(os.environ.get("TEST_FRAMEWORK", "starlette")))
    if os.environ.get("TEST_WRAPPED")
    else None
)
