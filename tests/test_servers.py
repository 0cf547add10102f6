"""Real servers (uvicorn, hypercorn, granian) and real apps' own logging: one JSON line each."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from tests import servers


def _serve(server: str, kind: str, paths: list[str]) -> str:
    """Start ``server`` on the ``kind`` app of tests/logging_served.py, GET ``paths``, stop."""
    proc, port = servers.start(server, "tests.logging_served:app", env={"LOGGING_APP": kind})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for path in paths:
                client.get(path)
    finally:
        out = servers.stop(proc)
    return out


def _split(out: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON lines (parsed) and the other lines of a server's output."""
    parsed, other = [], []
    for line in out.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(value, dict):
            parsed.append(value)
        else:
            other.append(line)
    return parsed, other


@pytest.mark.parametrize("server", servers.SERVERS)
def test_every_line_a_worker_writes_is_one_json_object_once(server: str) -> None:
    """Start-up, app, warning and server-traceback lines are each one JSON object, written once."""
    out = _serve(server, "raw", ["/ok", "/log", "/warn", "/crash"])
    lines, other = _split(out)
    if server == "granian":
        # granian's supervisor never imports the app: its own lines stay as it writes them.
        other = [line for line in other if not line.startswith("[INFO] ")]
    assert other == []
    started = {
        "uvicorn": "Application startup complete.",
        "hypercorn": "Running on http://127.0.0.1:",
        "granian": "Started worker-1",
    }[server]
    assert len([x for x in lines if x["event"].startswith(started)]) == 1
    events = Counter((x["logger"], x["event"]) for x in lines if x["logger"] != "buttress.access")
    assert [e for e, n in events.items() if n > 1] == []
    assert not [x for x in lines if "asctime" in x]
    (app_line,) = [x for x in lines if x["logger"] == "myapp"]
    assert app_line["order"] == 7
    (warning,) = [x for x in lines if x["logger"] == "py.warnings"]
    assert warning["event"] == "old_api() is going away\nuse new_api()"
    assert warning["category"] == "UserWarning"
    (crash,) = [x for x in lines if "exception" in x]
    assert crash["level"] == "error"
    assert "Traceback" not in crash["event"] and not crash["event"].endswith("\n")
    (exc,) = crash["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert exc["exc_value"] == "server-side boom\nsecond line"
    assert exc["frames"][-1]["name"] == "_outside"


@pytest.mark.parametrize(
    ("kind", "path", "event"),
    [
        ("litestar", "/log", "from the app"),  # Litestar's own root handler is set up in Litestar()
        ("django", "/missing", "Not Found: /missing"),  # Django's DEBUG console handler
        ("loguru", "/log", "from the app"),  # loguru's InterceptHandler recipe on the root
    ],
)
def test_apps_that_configure_logging_themselves_print_each_line_once(
    kind: str, path: str, event: str
) -> None:
    """Litestar's, Django's and loguru's own console output does not double buttress's lines."""
    out = _serve("uvicorn", kind, [path])
    lines, other = _split(out)
    assert other == []
    assert len([x for x in lines if x["event"] == event]) == 1
    assert len([x for x in lines if x["event"] == "Application startup complete."]) == 1
    replaced = [x for x in lines if x["event"] == "replaced_root_handlers"]
    # Only a handler the app itself chose is worth a warning; Litestar's default is not.
    assert len(replaced) == (1 if kind == "loguru" else 0)
