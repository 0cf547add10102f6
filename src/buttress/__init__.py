"""buttress: production middleware for any ASGI app.

Request context and structured logs, Prometheus metrics, a JSON error contract with
Sentry, rate limiting and observable retries, composed by ``wrap(app)`` or used alone.

Exceptions::

    ValueError
     └── ConfigError        a BUTTRESS_* setting is invalid (names the variable and value)
    UserWarning
     └── ConfigWarning      an unknown BUTTRESS_* variable (most likely a typo)
"""

from __future__ import annotations

from buttress.config import ConfigError, ConfigWarning, Settings
from buttress.context import (
    RequestContextMiddleware,
    client_ip,
    get_client_ip,
    get_request_id,
    get_trace_id,
)
from buttress.errors import ErrorMiddleware
from buttress.logs import configure_logging
from buttress.metrics import MetricsMiddleware
from buttress.ratelimit import RateLimitMiddleware
from buttress.sentry import init_sentry
from buttress.stack import wrap

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "ErrorMiddleware",
    "MetricsMiddleware",
    "RateLimitMiddleware",
    "RequestContextMiddleware",
    "Settings",
    "__version__",
    "client_ip",
    "configure_logging",
    "get_client_ip",
    "get_request_id",
    "get_trace_id",
    "init_sentry",
    "wrap",
]
