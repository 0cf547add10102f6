"""Development mode: a start-up panel that says what the stack is doing.

With ``BUTTRESS_ENV=development``, ``wrap()`` prints this panel once, so a developer sees
at a glance which layers are on, where the metrics are, which limits apply and whether
errors go to Sentry, instead of discovering it from a surprising 429. (Rich tracebacks
with locals are set up by ``configure_logging``; locals never reach JSON output.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buttress.config import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.panel import Panel

__all__ = ["print_startup_summary", "startup_summary"]


def _sentry_active() -> bool:
    import sentry_sdk

    return bool(sentry_sdk.get_client().is_active())


def _rows(settings: Settings) -> list[tuple[str, str]]:
    s = settings
    rows: list[tuple[str, str]] = [("env", s.env)]
    console_hint = " (rich tracebacks with locals)" if s.development else ""
    log = f"{s.effective_log_format}, level {s.log_level}{console_hint}"
    rows.append(("logs", log))
    access = "off"
    if s.access_log:
        access = "on"
        if s.access_log_exclude:
            access += ", except " + ", ".join(s.access_log_exclude)
    rows.append(("access log", access))
    rows.append(("request id", f"header {s.request_id_header}"))
    proxies = ", ".join(str(n) for n in s.trusted_proxies) or "none (socket peer is the client)"
    rows.append(("trusted proxies", proxies))
    if not s.metrics:
        metrics = "off"
    elif not s.metrics_path:
        metrics = "on, no endpoint"
    else:
        metrics = f"GET {s.metrics_path}" + (" (bearer token)" if s.metrics_token else "")
    rows.append(("metrics", metrics))
    rows.append(("errors", f"{s.error_format} format" + _mapped(s)))
    if _sentry_active():
        codes = _ranges(s.sentry_status_codes)
        rows.append(("sentry", f"on, statuses {codes}"))
    else:
        rows.append(("sentry", "off (set SENTRY_DSN to report errors)"))
    rows.append(("rate limits", _limits(s)))
    rows.append(
        (
            "retries",
            f"{s.retry_attempts} attempts, waits {s.retry_wait_min:g}-{s.retry_wait_max:g} s",
        )
    )
    return rows


def _mapped(s: Settings) -> str:
    n = len(s.exception_map)
    return f", {n} mapped exception{'s' if n != 1 else ''}" if n else ""


def _ranges(codes: frozenset[int]) -> str:
    ordered = sorted(codes)
    if not ordered:
        return "none"
    parts: list[str] = []
    start = prev = ordered[0]
    for code in [*ordered[1:], None]:
        if code is not None and code == prev + 1:
            prev = code
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if code is not None:
            start = prev = code
    return ",".join(parts)


def _limits(s: Settings) -> str:
    if not s.rate_limit and not s.rate_limits:
        return "off"
    parts = []
    if s.rate_limit:
        key = s.rate_limit_key if isinstance(s.rate_limit_key, str) else "custom key"
        parts.append(f"{s.rate_limit} per {key}")
    parts.extend(f"{key}: {value}" for key, value in s.rate_limits.items())
    storage = s.redacted()["BUTTRESS_RATE_LIMIT_STORAGE"]
    return "; ".join(parts) + f" ({s.rate_limit_strategy}, {storage})"


def startup_summary(settings: Settings) -> Panel:
    """A rich panel listing what the stack does with ``settings``."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for name, value in _rows(settings):
        table.add_row(name, Text(value))  # Text: no markup in values
    return Panel(table, title="buttress", subtitle="development mode", expand=False)


def print_startup_summary(settings: Settings, *, console: Console | None = None) -> None:
    """Print the start-up panel to ``console`` (default: standard error)."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    console.print(startup_summary(settings))
