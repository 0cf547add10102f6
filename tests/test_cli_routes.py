"""`buttress routes`: every route an app declares and what buttress does with it, without serving."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import buttress
from tests.apps import build
from tests.asgi_driver import call, http_scope
from tests.conftest import ROOT

FRAMEWORKS = ("starlette", "fastapi", "litestar", "django", "quart")
LIMITS = '{"/items/{id}": "10/minute", "POST /ok": "5/minute"}'
ROUTES = ("/ok", "/items/{item_id}", "/log", "/boom", "/conflict", "/domain", "/stream")


def _cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BUTTRESS_")}
    return subprocess.run(
        [sys.executable, "-m", "buttress.cli", "routes", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _listing(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    result = _cli(*args, "--json", env=env, cwd=cwd)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["exit"] == result.returncode
    return report


def _rows(report: dict[str, Any], template: str) -> list[dict[str, Any]]:
    return [row for row in report["routes"] if row["template"] == template]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_every_route_of_every_framework_is_listed_with_its_limit(name: str) -> None:
    """Each framework's routes come out in buttress' spelling, each with the limit it gets."""
    env = {"BUTTRESS_RATE_LIMITS": '{"/items/{id}": "10/minute"}', "BUTTRESS_RATE_LIMIT": "9/hour"}
    report = _listing(f"tests.apps:{name}_app", env=env)
    assert report["framework"] == name and report["exit"] == 0
    for template in ROUTES:
        (row,) = [
            r for r in _rows(report, template) if "GET" in r["methods"] or "*" in r["methods"]
        ]
        assert row["framework"] == name and row["metrics_label"] == template
        assert row["access_log"] == "yes"
        limit = row["rate_limit"]
        if template == "/items/{item_id}":
            assert (limit["pattern"], limit["limits"]) == ("/items/{id}", ["10 per 1 minute"])
        else:
            assert (limit["pattern"], limit["limits"]) == (None, ["9 per 1 hour"])
        assert limit["key"] == "ip"
    (metrics,) = _rows(report, "/metrics")
    assert metrics["framework"] == "buttress" and metrics["rate_limit"]["exempt"]


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_the_listed_limit_is_the_one_a_request_gets(name: str) -> None:
    """For every listed route and method, real requests through the wrapped app get that limit."""
    limits = {"/items/{id}": "3/minute", "POST /ok": "4/minute"}
    env = {"BUTTRESS_RATE_LIMITS": json.dumps(limits), "BUTTRESS_RATE_LIMIT": "2/minute"}
    report = _listing(f"tests.apps:{name}_app", env=env)
    app = buttress.wrap(build(name), rate_limits=limits, rate_limit="2/minute", access_log=False)
    checked = 0
    for row in report["routes"]:
        if row["framework"] == "buttress" or row["kind"] != "http":
            continue
        path = re.sub(r"\{[^}]+\}", "abc", row["template"])
        for method in row["methods"]:
            checked += 1
            client = (f"198.51.100.{checked}", 4000)  # a fresh budget for each
            listed = row["rate_limit"]["limits"]
            sends = int(listed[0].split()[0]) + 1 if listed else 5
            for _ in range(sends):
                scope = http_scope(path, "PATCH" if method == "*" else method, client=client)
                sent = asyncio.run(call(app, scope))
            status = sent[0]["status"]
            if listed:
                assert status == 429, (row, method)
                if method != "HEAD":  # a HEAD 429 has no body
                    assert listed[0] in json.loads(sent[1]["body"])["detail"]
            else:
                assert status != 429, (row, method)
    assert checked >= len(ROUTES)


def test_a_limit_pattern_that_matches_no_route_fails_the_run() -> None:
    """A typo'd path, or a method the route does not take, exits 1 and names the pattern."""
    env = {"BUTTRESS_RATE_LIMITS": '{"/itmes/{id}": "1/second", "POST /log": "1/second"}'}
    result = _cli("tests.apps:starlette_app", env=env)
    assert result.returncode == 1, result.stderr
    assert "limit pattern '/itmes/{id}' matches no route" in result.stdout
    assert "limit pattern 'POST /log' matches no route" in result.stdout
    report = _listing("tests.apps:starlette_app", env=env)
    assert report["unmatched"]["rate_limits"] == ["/itmes/{id}", "POST /log"]


def test_patterns_that_match_a_route_pass() -> None:
    """Patterns naming a route in any spelling the limiter routes alike exit 0."""
    env = {
        "BUTTRESS_RATE_LIMITS": json.dumps(
            {"GET /ok/": "1/second", "/items/42": "1/second", "HEAD /log": "1/second"}
        ),
        "BUTTRESS_RATE_LIMIT_EXEMPT": "/metrics,/stream",
    }
    report = _listing("tests.apps:starlette_app", env=env)
    # HEAD is charged as GET, so a HEAD pattern is never used: it is reported.
    assert report["unmatched"] == {"rate_limits": ["HEAD /log"], "exempt": []}
    (stream,) = _rows(report, "/stream")
    assert stream["rate_limit"] == {"exempt": True, "reason": "rate_limit_exempt"}
    assert stream["metrics_label"] == "/stream"


def test_an_exemption_that_matches_no_route_fails_the_run() -> None:
    """An exempt path no route has exits 1: the route meant to be exempt is limited."""
    result = _cli("tests.apps:quart_app", env={"BUTTRESS_RATE_LIMIT_EXEMPT": "/metrics,/helthz"})
    assert result.returncode == 1, result.stderr
    assert "exemption '/helthz' matches no route" in result.stdout


def test_a_raw_asgi_app_has_no_routes_and_its_patterns_are_unverifiable() -> None:
    """A raw ASGI app exits 0, says it has no route table, and lists patterns it cannot check."""
    env = {"BUTTRESS_RATE_LIMITS": LIMITS}
    result = _cli("tests.apps:raw_app", env=env)
    assert result.returncode == 0, result.stderr
    assert "declares no routes" in result.stdout
    report = _listing("tests.apps:raw_app", env=env)
    assert report["framework"] == "raw"
    assert report["unverifiable"] == ["/items/{id}", "POST /ok"]
    assert [row["template"] for row in report["routes"]] == ["/metrics"]


def test_mounts_and_included_routers_give_full_templates() -> None:
    """Starlette mounts and FastAPI routers (nested, prefixed, sub-apps) list full templates."""
    fastapi = _listing("tests.apps:fastapi_nested_app")
    templates = {row["template"] for row in fastapi["routes"]}
    assert {"/api/v1/users/{user_id}", "/plain/{x}", "/sub/things/{thing_id}"} <= templates
    starlette = _listing("tests.apps:starlette_mounted_app")
    by_template = {row["template"]: row for row in starlette["routes"]}
    assert {"/a/{x}", "/m/n/{id}", "/raw/{path:path}"} <= set(by_template)
    assert by_template["/raw/{path:path}"]["methods"] == ["*"]
    assert by_template["/raw/{path:path}"]["metrics_label"] == "/raw/{path}"


def test_django_includes_and_regex_paths_are_listed(tmp_path: Path) -> None:
    """Django routes come from the URL resolver, through include(), re_path() and converters."""
    (tmp_path / "djsite.py").write_text(
        textwrap.dedent(
            """
            import django
            from django.conf import settings
            from django.http import HttpResponse
            from django.urls import include, path, re_path

            def view(request, **kwargs):
                return HttpResponse("ok")

            api = [path("orders/<int:order_id>/", view), re_path(r"^files/(?P<name>[a-z]+)$", view)]
            urlpatterns = [path("health", view), path("api/v2/", include(api))]
            settings.configure(ROOT_URLCONF="djsite", ALLOWED_HOSTS=["*"], SECRET_KEY="x")
            django.setup()
            from django.core.asgi import get_asgi_application

            app = get_asgi_application()
            """
        )
    )
    env = {"BUTTRESS_RATE_LIMITS": '{"POST /api/v2/orders/{id}": "3/minute"}'}
    report = _listing("djsite:app", env=env, cwd=tmp_path)
    assert report["framework"] == "django" and report["exit"] == 0
    orders = {r["methods"][0]: r for r in _rows(report, "/api/v2/orders/{order_id}/")}
    assert orders["POST"]["rate_limit"]["limits"] == ["3 per 1 minute"]
    assert orders["*"]["rate_limit"]["limits"] == []  # no default limit: none
    assert orders["*"]["metrics_label"] == "/api/v2/orders/{order_id}/"
    (files,) = _rows(report, "/api/v2/files/{name}")
    assert files["metrics_label"] == "/api/v2/files/(?P{name}[a-z]+)$"  # Django's own route text


def test_an_app_that_wraps_itself_is_listed_with_its_own_settings(tmp_path: Path) -> None:
    """`app = buttress.wrap(app, ...)` is listed with the options given to it, not the env's."""
    (tmp_path / "wrapped.py").write_text(
        textwrap.dedent(
            """
            import buttress
            from tests.apps import starlette_app

            app = buttress.wrap(
                starlette_app(),
                rate_limits={"POST /boom": "1/minute", "/log": {"limit": "2/minute", "shared": "g"}},
                rate_limit_key="header:X-API-Key",
                rate_limit_exempt="/metrics,/ok",
                access_log_exclude="/stream",
            )
            """
        )
    )
    env = {"BUTTRESS_RATE_LIMITS": '{"/nowhere": "1/second"}'}
    report = _listing("wrapped:app", env=env, cwd=tmp_path)
    assert report["settings"] == "settings given to the app's own wrap()"
    assert report["unmatched"] == {"rate_limits": ["POST /boom"], "exempt": []}
    (log,) = _rows(report, "/log")
    assert log["rate_limit"]["shared"] == "g" and log["rate_limit"]["limits"] == ["2 per 1 minute"]
    assert log["rate_limit"]["key"] == "header:x-api-key (else ip)"
    assert _rows(report, "/ok")[0]["rate_limit"]["exempt"]
    assert _rows(report, "/stream")[0]["access_log"] == "no"


def test_an_app_that_wraps_itself_without_exemptions_is_listed(tmp_path: Path) -> None:
    """A self-wrapped stack with no exemption and no metrics layer still lists its routes."""
    (tmp_path / "bare.py").write_text(
        "import buttress\nfrom tests.apps import quart_app\n"
        "app = buttress.wrap(quart_app(), metrics=False, metrics_path='', rate_limit='3/hour')\n"
    )
    report = _listing("bare:app", cwd=tmp_path)
    assert report["exit"] == 0 and not _rows(report, "/metrics")
    (ok,) = _rows(report, "/ok")
    assert ok["metrics"] == "off" and ok["rate_limit"]["limits"] == ["3 per 1 hour"]


def test_a_route_at_the_metrics_path_is_reported_as_shadowed(tmp_path: Path) -> None:
    """An app route at the metrics path is never reached: the listing says so."""
    (tmp_path / "shadow.py").write_text(
        textwrap.dedent(
            """
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def page(request):
                return PlainTextResponse("mine")

            app = Starlette(routes=[Route("/metrics", page), Route("/stats", page)])
            """
        )
    )
    report = _listing("shadow:app", cwd=tmp_path)
    row = next(r for r in _rows(report, "/metrics") if r["framework"] == "starlette")
    assert row["metrics"] == "shadowed by the metrics endpoint"
    assert any("served by buttress' metrics endpoint" in note for note in report["notes"])
    moved = _listing("shadow:app", env={"BUTTRESS_METRICS_PATH": "/stats"}, cwd=tmp_path)
    assert _rows(moved, "/metrics")[0]["metrics"] == "counted"
    assert moved["exit"] == 0  # the default exemption follows the metrics path


def test_the_table_fits_the_terminal_width() -> None:
    """In an 80-column terminal no line is wider than 80 columns and nothing is cut."""
    env = {"COLUMNS": "80", "BUTTRESS_RATE_LIMITS": LIMITS, "BUTTRESS_RATE_LIMIT": "1/second"}
    result = _cli("tests.apps:fastapi_nested_app", env=env)
    assert result.returncode == 1, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "…" not in result.stdout
    assert "/api/v1/users/" in result.stdout  # a long template folds onto the next line


def test_a_target_that_cannot_be_loaded_exits_2() -> None:
    """A wrong target exits 2 with the reason, as `buttress run` does."""
    result = _cli("tests.apps:no_such_app")
    assert result.returncode == 2
    assert "cannot load 'tests.apps:no_such_app'" in result.stderr
