"""The ``buttress`` command: serve any ASGI app wrapped in the stack, show settings, demo.

``buttress run myapp.main:app`` needs no change to the app's code: the app is imported in
each uvicorn worker through ``buttress._serve`` and wrapped there, unless it is already a
buttress stack (``app = buttress.wrap(app)`` in the module), which is served as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from buttress.config import ConfigError, Settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buttress", description="Production middleware for any ASGI app."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve MODULE:ATTR wrapped with the buttress stack")
    run.add_argument("app", metavar="MODULE:ATTR", help="the ASGI app, e.g. myapp.main:app")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    run.add_argument("--root-path", default="", help="ASGI root_path behind a path prefix")
    sub.add_parser("config", help="print the effective settings (secrets masked)")
    demo = sub.add_parser("demo", help="serve a bundled example app with the whole stack")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``buttress`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"buttress: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        return _config(settings)
    if args.command == "demo":
        return _demo(settings, args.host, args.port)
    return _run(settings, args.app, args.host, args.port, args.workers, args.root_path)


def _config(settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from buttress.config import FIELDS

    table = Table(title="buttress settings", show_lines=False)
    table.add_column("variable", style="cyan", no_wrap=True)
    table.add_column("value")
    table.add_column("source", style="dim")
    values = settings.redacted()
    for field in FIELDS:
        source = "env" if field.env in os.environ else "default"
        table.add_row(field.env, values[field.env], source)
    Console(width=160).print(table)
    return 0


def _run(settings: Settings, target: str, host: str, port: int, workers: int, root: str) -> int:
    import uvicorn

    from buttress._serve import APP_ENV, load_target
    from buttress.logs import configure_logging
    from buttress.metrics_endpoint import prepare_multiprocess_dir
    from buttress.ratelimit import warn_if_memory_with_workers
    from buttress.stack import logging_options

    if workers < 1:
        print(f"buttress: --workers={workers} must be 1 or more", file=sys.stderr)
        return 2
    try:
        load_target(target)  # fail here, with a clear message, not in every worker
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"buttress: cannot load {target!r}: {exc}", file=sys.stderr)
        return 2
    if settings.configure_logging:
        configure_logging(**logging_options(settings))
    try:
        prepare_multiprocess_dir(workers)
    except (OSError, ValueError) as exc:
        print(f"buttress: {exc}", file=sys.stderr)
        return 2
    warn_if_memory_with_workers(
        limited=bool(settings.rate_limit or settings.rate_limits),
        storage=settings.rate_limit_storage,
        workers=workers,
    )
    os.environ[APP_ENV] = target
    uvicorn.run(
        "buttress._serve:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        root_path=root,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # buttress resolves the client IP from trusted proxies itself
        server_header=False,
    )
    return 0


def _demo(settings: Settings, host: str, port: int) -> int:
    import uvicorn
    from rich.console import Console

    from buttress._demo import DEMO_CURLS, demo_app

    app = demo_app()
    console = Console(stderr=True)
    console.print(f"[bold]buttress demo[/bold] on http://{host}:{port} - try:")
    for line in DEMO_CURLS:
        console.print(
            "  " + line.replace("{base}", f"http://{host}:{port}"), highlight=False, soft_wrap=True
        )
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
