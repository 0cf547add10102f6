"""A rate-limited app for server subprocesses: settings come from ``BUTTRESS_*`` variables.

``uvicorn tests.ratelimit_served:app`` serves the Starlette app of the matrix behind only
``RateLimitMiddleware``, so two processes pointed at one Redis share one limit.
"""

from __future__ import annotations

from buttress.config import Settings
from buttress.ratelimit import RateLimitMiddleware
from buttress.stack import rate_limit_options
from tests.apps import build

app = RateLimitMiddleware(build("starlette"), **rate_limit_options(Settings.from_env()))
