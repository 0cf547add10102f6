"""``buttress run``: check the target, print the development panel once, start uvicorn.

# Strategy: one process or several. With one worker and no reload, the app is resolved
# and wrapped here and handed to uvicorn as an object: nothing is imported twice. With
# ``--workers N`` or ``--reload``, uvicorn starts processes that each call
# ``buttress._serve:create_app``; this (supervising) process still resolves the target
# first, so a wrong one fails once, here, with exit status 2, and it prints the
# development panel once for all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from buttress.config import Settings

__all__ = ["run"]


def _error(message: str) -> int:
    print(f"buttress: {message}", file=sys.stderr)
    return 2


def run(settings: Settings, args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Serve ``args.app`` under uvicorn with ``options`` (the ones given after ``--``)."""
    import uvicorn

    from buttress._serve import APP_ENV, TargetError, hand_off, resolve
    from buttress.devmode import print_startup_summary
    from buttress.logs import configure_logging
    from buttress.metrics_endpoint import prepare_multiprocess_dir
    from buttress.ratelimit import warn_if_memory_with_workers
    from buttress.stack import logging_options

    if settings.configure_logging:
        configure_logging(**logging_options(settings))
    try:
        prepare_multiprocess_dir(args.workers)  # before anything imports prometheus-client
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    target = args.app
    try:
        served = resolve(target, factory=args.factory)
    except TargetError as exc:
        return _error(str(exc))
    except (ImportError, AttributeError, ValueError) as exc:
        return _error(f"cannot load {target!r}: {exc}")
    warn_if_memory_with_workers(
        limited=bool(settings.rate_limit or settings.rate_limits),
        storage=settings.rate_limit_storage,
        workers=args.workers,
    )
    in_process = args.workers == 1 and not args.reload
    app: Any = None
    if in_process:
        try:
            app = served.wrap()
        except ValueError as exc:  # a setting the stack refuses, such as a storage URI
            return _error(str(exc))
    else:
        os.environ[APP_ENV] = hand_off(target, factory=served.factory)
        app = "buttress._serve:create_app"
        options["factory"] = True
    panel = served.panel(settings)
    if panel is not None:
        if not in_process:
            _start_sentry_for_the_panel(settings)
        print_startup_summary(panel)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        reload=args.reload,
        root_path=args.root_path,
        **{
            "log_config": None,
            "access_log": False,
            "proxy_headers": False,  # buttress resolves the client IP from trusted proxies
            "server_header": False,
            **options,
        },
    )
    return 0


def _start_sentry_for_the_panel(settings: Settings) -> None:
    """Start Sentry here as each worker will, so the panel says whether it reports."""
    from buttress.sentry import init_sentry
    from buttress.stack import sentry_options

    init_sentry(**sentry_options(settings))
