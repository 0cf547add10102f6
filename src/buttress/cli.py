"""The ``buttress`` command: serve any ASGI app wrapped in the stack, show settings and routes, demo.

``buttress run myapp.main:app`` needs no change to the app's code: the app (or what its
factory returns) is imported in each uvicorn worker through ``buttress._serve`` and
wrapped there, unless it is already a buttress stack (``app = buttress.wrap(app)`` in the
module), which is served as it is. The uvicorn options people type from habit are
accepted (``--reload``, ``--factory``, ``--log-level``, ``--root-path``); any other uvicorn
option goes after ``--``: ``buttress run app:app -- --timeout-keep-alive 5``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from buttress.config import ConfigError, Settings

__all__ = ["main"]

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUSTED = "BUTTRESS_TRUSTED_PROXIES and BUTTRESS_FORWARDED_HEADER"
#: uvicorn options ``buttress run`` refuses, and why.
_REFUSED = {
    "--proxy-headers": (
        f"buttress resolves the client address itself, from {_TRUSTED}; uvicorn's proxy "
        "headers would rewrite it before buttress checks who sent them, so a client could "
        "choose its own IP (and rate-limit key). Set BUTTRESS_TRUSTED_PROXIES to your "
        "proxies' addresses instead."
    ),
    "--forwarded-allow-ips": (
        f"buttress decides which proxies to believe from {_TRUSTED}; "
        "set BUTTRESS_TRUSTED_PROXIES to your proxies' addresses instead."
    ),
    "--log-config": (
        "buttress configures logging (BUTTRESS_LOG_LEVEL, BUTTRESS_LOG_FORMAT); "
        "BUTTRESS_CONFIGURE_LOGGING=false leaves it to your own set-up."
    ),
    "--access-log": "buttress writes the access log itself (BUTTRESS_ACCESS_LOG).",
}
#: uvicorn options that ``buttress run`` has itself: they go before ``--``.
_OWN = (
    "--host",
    "--port",
    "--workers",
    "--root-path",
    "--reload",
    "--factory",
    "--log-level",
    "--app-dir",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"buttress {version('buttress')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "buttress (version unknown)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buttress", description="Production middleware for any ASGI app."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="serve MODULE:ATTR wrapped with the buttress stack",
        usage="buttress run [options] MODULE:ATTR [-- uvicorn options]",
        epilog=(
            "Other uvicorn options go after --, e.g. buttress run app:app -- "
            "--timeout-keep-alive 5 --limit-concurrency 1000 (see: buttress run app:app -- --help)."
        ),
    )
    run.add_argument("app", metavar="MODULE:ATTR", help="the ASGI app, e.g. myapp.main:app")
    run.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    run.add_argument("--root-path", default="", help="ASGI root_path behind a path prefix")
    run.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:ATTR is a function returning the app (a no-argument one is found anyway)",
    )
    run.add_argument(
        "--reload", action="store_true", help="restart when a file changes (development)"
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=_LOG_LEVELS,
        help="the log level for this run (wins over BUTTRESS_LOG_LEVEL)",
    )
    run.add_argument("--app-dir", default=None, help="import MODULE from this directory")
    run.add_argument("--version", action="version", version=_version())
    sub.add_parser("config", help="print the effective settings (secrets masked)")
    routes = sub.add_parser(
        "routes",
        help="list the app's routes and what buttress does with each, without serving",
        description=(
            "List every route MODULE:ATTR declares with its metrics label, rate limit, key "
            "and access logging under the current BUTTRESS_* settings, and every limit "
            "pattern or exemption that matches no route (exit status 1)."
        ),
    )
    routes.add_argument("app", metavar="MODULE:ATTR", help="the ASGI app, e.g. myapp.main:app")
    routes.add_argument(
        "--factory", action="store_true", help="MODULE:ATTR is a function returning the app"
    )
    routes.add_argument("--app-dir", default=None, help="import MODULE from this directory")
    routes.add_argument("--json", action="store_true", help="print JSON for machines")
    demo = sub.add_parser("demo", help="serve a bundled example app with the whole stack")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``buttress`` console script; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in args_in:
        at = args_in.index("--")
        args_in, passthrough = args_in[:at], args_in[at + 1 :]
    parser = _parser()
    args, unknown = parser.parse_known_args(args_in)
    if args.command != "run" and (unknown or passthrough):
        parser.parse_args(args_in)  # argparse's own error for unrecognized arguments
        parser.error(f"only 'buttress run' takes options after --, not {args.command!r}")
    if unknown:
        return _usage(_unknown_option(unknown[0], args))
    if args.command == "run":
        return _run_command(args, passthrough)
    settings = _settings()
    if settings is None:
        return 2
    if args.command == "config":
        return _config(settings)
    if args.command == "routes":
        return _routes(settings, args)
    return _demo(settings, args.host, args.port)


def _usage(message: str) -> int:
    print(f"buttress run: {message}", file=sys.stderr)
    return 2


def _unknown_option(option: str, args: argparse.Namespace) -> str:
    name = option.partition("=")[0]
    if name in _REFUSED:
        return f"{name} is not accepted: {_REFUSED[name]}"
    return (
        f"unrecognized option {option!r}; uvicorn's other options go after --, "
        f"e.g. buttress run {args.app} -- {option} ..."
    )


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"buttress: {exc}", file=sys.stderr)
        return None


def _uvicorn_options(target: str, passthrough: list[str]) -> dict[str, Any] | int:
    """The options after ``--``, parsed by uvicorn's own command line; an int is an exit code.

    Only options given on the command line are returned (uvicorn's ``UVICORN_*``
    variables are not read), as ``uvicorn.run`` keyword arguments.
    """
    if not passthrough:
        return {}
    import click
    from click.core import ParameterSource
    from uvicorn.main import main as uvicorn_command

    try:
        ctx = uvicorn_command.make_context("buttress run MODULE:ATTR --", [target, *passthrough])
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.ClickException as exc:
        return _usage(f"after --: {exc.format_message()}")
    options: dict[str, Any] = {}
    for param in uvicorn_command.params:
        name = param.name
        if name is None or ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0] if param.opts else name
        if name == "app":
            continue
        value = ctx.params[name]
        if flag in _REFUSED and value is not False:  # --no-proxy-headers is what buttress does
            return _usage(f"{flag} is not accepted: {_REFUSED[flag]}")
        if flag in _OWN:
            return _usage(f"{flag} is an option of buttress run itself: write it before --.")
        if value is False and flag in _REFUSED:
            continue
        if name == "headers":
            value = [header.split(":", 1) for header in value]
        elif isinstance(value, tuple):
            value = list(value)
        options[name] = value
    return options


def _run_command(args: argparse.Namespace, passthrough: list[str]) -> int:
    options = _uvicorn_options(args.app, passthrough)
    if isinstance(options, int):
        return options
    if args.workers < 1:
        return _usage(f"--workers={args.workers} must be 1 or more")
    if args.reload and args.workers > 1:
        return _usage("--reload restarts a single process; it cannot be combined with --workers")
    if options.get("env_file"):
        # Read before the settings, so the variables it sets are checked here too.
        from dotenv import load_dotenv

        load_dotenv(dotenv_path=options["env_file"])
    if args.log_level:
        os.environ["BUTTRESS_LOG_LEVEL"] = args.log_level
    if args.app_dir:
        sys.path.insert(0, args.app_dir)
        options["app_dir"] = args.app_dir  # uvicorn puts it on each worker's path too
    settings = _settings()
    if settings is None:
        return 2
    from buttress._run import run

    return run(settings, args, options)


def _config(settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from buttress.config import FIELDS, mask_uri
    from buttress.devmode import _ranges

    table = Table(title="buttress settings", show_lines=False)
    table.add_column("variable", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim", no_wrap=True)
    values = settings.redacted()
    values["BUTTRESS_SENTRY_STATUS_CODES"] = _ranges(settings.sentry_status_codes)
    for field in FIELDS:
        source = "env" if field.env in os.environ else "default"
        table.add_row(field.env, values[field.env], source)
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    sentry = f"on, {mask_uri(dsn)}" if dsn else "off (set SENTRY_DSN to report errors)"
    table.add_row("SENTRY_DSN", sentry, "env" if dsn else "default")
    Console().print(table)  # as wide as the terminal (or COLUMNS), never wider
    return 0


def _routes(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from buttress._routelist import Policy, build_report, render
    from buttress._serve import TargetError, resolve
    from buttress.stack import is_stack

    if args.app_dir:
        sys.path.insert(0, args.app_dir)
    try:
        served = resolve(args.app, factory=args.factory)
    except TargetError as exc:
        print(f"buttress: {exc}", file=sys.stderr)
        return 2
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"buttress: cannot load {args.app!r}: {exc}", file=sys.stderr)
        return 2
    stacked = is_stack(served.app)
    policy = Policy.from_stack(served.app) if stacked else Policy.from_settings(settings)
    report = build_report(served.app, policy)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, Console())  # as wide as the terminal (or COLUMNS), never wider
    return int(report["exit"])


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
