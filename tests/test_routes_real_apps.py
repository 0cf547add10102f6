"""Route labels of real-shaped apps: parameter mounts, docs and static mounts, 405s, bare Django.

Findings from real use (issues 11 and 12). Every assertion here holds on the newest and
on the oldest versions pyproject.toml allows (``make test-oldest`` runs this file there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import buttress
from tests.apps import FRAMEWORKS, build, raw_app
from tests.test_routes import Recorder, _routes_of


async def _hello(request: Any) -> Any:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("hello")


def org_mounts_app() -> Any:
    """Starlette with mounts that capture parameters, nested, and a mounted sub-app.

    ``/orgs/{org}/items/{item_id}``, ``/orgs/{org}/teams/{team}/members/{member}``,
    ``/tenants/{tenant}/api/things/{thing_id}`` (a sub-Starlette app).
    """
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    sub = Starlette(routes=[Mount("/api", routes=[Route("/things/{thing_id}", _hello)])])
    return Starlette(
        routes=[
            Mount(
                "/orgs/{org}",
                routes=[
                    Route("/items/{item_id}", _hello),
                    Mount("/teams/{team:int}", routes=[Route("/members/{member}", _hello)]),
                ],
            ),
            Mount("/tenants/{tenant}", app=sub),
        ]
    )


def fastapi_org_app() -> Any:
    """FastAPI sub-app with an included router, mounted under a parameter mount."""
    from fastapi import APIRouter, FastAPI

    sub = FastAPI()
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def user(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    sub.include_router(users, prefix="/v1")
    app = FastAPI()
    app.mount("/orgs/{org}", sub)
    return app


@pytest.mark.parametrize("root_path", ["", "/prefix"])
async def test_parameter_mounts_label_with_their_template(root_path: str) -> None:
    """/orgs/acme/items/1 is labelled /orgs/{org}/items/{item_id}, never with 'acme'."""
    paths = [
        "/orgs/acme/items/1",
        "/orgs/globex/items/2",
        "/orgs/acme/teams/7/members/bob",
        "/tenants/t1/api/things/3",
        "/orgs/acme/nope",
    ]
    routes = await _routes_of(org_mounts_app(), paths, root_path)
    assert routes == [
        "/orgs/{org}/items/{item_id}",
        "/orgs/{org}/items/{item_id}",
        "/orgs/{org}/teams/{team}/members/{member}",
        "/tenants/{tenant}/api/things/{thing_id}",
        None,
    ]


async def test_fastapi_router_in_a_sub_app_under_a_parameter_mount() -> None:
    """FastAPI include_router inside a sub-app mounted at /orgs/{org} keeps every template."""
    routes = await _routes_of(fastapi_org_app(), ["/orgs/acme/v1/users/9", "/orgs/acme/docs"])
    assert routes == ["/orgs/{org}/v1/users/{user_id}", "/orgs/{org}/docs"]


async def test_one_router_mounted_twice_is_labelled_by_the_mount_it_came_through() -> None:
    """A router mounted at /a/{x} and at /b gets the template of the mount that matched."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route, Router

    inner = Router(routes=[Route("/items/{item_id}", _hello)])
    app = Starlette(routes=[Mount("/a/{x}", app=inner), Mount("/b", app=inner)])
    routes = await _routes_of(app, ["/a/zz/items/1", "/b/items/2"])
    assert routes == ["/a/{x}/items/{item_id}", "/b/items/{item_id}"]


async def test_a_route_hidden_from_the_tree_under_a_parameter_mount_is_not_raw_text() -> None:
    """A router the tree cannot see (behind a plain function) never labels with the org's text."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route, Router

    inner = Router(routes=[Route("/items/{item_id}", _hello)])

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    app = Starlette(routes=[Mount("/orgs/{org}", app=dispatch)])
    routes = await _routes_of(app, ["/orgs/acme/items/1"])
    assert routes[0] is None or "acme" not in routes[0]


async def test_param_mount_label_through_metrics_is_bounded() -> None:
    """Through wrap(), /metrics counts many orgs under one route label."""
    app = buttress.wrap(org_mounts_app(), configure_logging=False, access_log=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for org in ("acme", "globex", "initech"):
            assert (await client.get(f"/orgs/{org}/items/1")).status_code == 200
        scrape = (await client.get("/metrics")).text
    routes = {
        sample.labels["route"]: sample.value
        for family in text_string_to_metric_families(scrape)
        if family.name == "http_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert routes == {"/orgs/{org}/items/{item_id}": 3.0}


async def test_fastapi_docs_static_and_mounted_apps_are_labelled(tmp_path: Path) -> None:
    """FastAPI's /docs and /openapi.json, a StaticFiles mount and a raw ASGI mount get labels."""
    from fastapi import FastAPI
    from starlette.staticfiles import StaticFiles

    (tmp_path / "app.css").write_text("body {}")
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=tmp_path))
    app.mount("/raw", raw_app())
    paths = ["/docs", "/openapi.json", "/static/app.css", "/static/missing.css", "/raw/ok"]
    routes = await _routes_of(app, paths)
    assert routes == ["/docs", "/openapi.json", "/static/{path}", "/static/{path}", "/raw/{path}"]


async def test_starlette_static_mount_is_labelled(tmp_path: Path) -> None:
    """app.mount('/static', StaticFiles(...)) in Starlette is labelled /static/{path}."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    (tmp_path / "app.css").write_text("body {}")
    app = Starlette(routes=[Mount("/static", StaticFiles(directory=tmp_path))])
    assert await _routes_of(app, ["/static/app.css"]) == ["/static/{path}"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_method_not_allowed_is_labelled_with_the_path_template(framework: str) -> None:
    """POST to a GET-only route is a 405 labelled with that route's template, not <unmatched>."""
    recorder = Recorder(build(framework))
    transport = httpx.ASGITransport(app=recorder)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        statuses = [(await client.post(path)).status_code for path in ("/ok", "/items/3")]
    assert statuses == [405, 405]
    expected = [None, None] if framework == "raw" else ["/ok", "/items/{item_id}"]
    assert recorder.routes == expected


async def test_django_without_the_middleware_gets_url_patterns() -> None:
    """A Django project without DjangoMiddleware in MIDDLEWARE still gets route templates."""
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings

    build("django")  # configures Django once for the session
    with override_settings(MIDDLEWARE=[]):
        handler = ASGIHandler()
    routes = await _routes_of(handler, ["/items/42", "/ok", "/no/such/thing"], "/pre")
    assert routes == ["/items/{item_id}", "/ok", None]


async def test_django_hook_is_installed_once() -> None:
    """Wrapping the same Django handler twice resolves one template, once."""
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings

    from buttress.adapters import install_django

    build("django")
    with override_settings(MIDDLEWARE=[]):
        handler = ASGIHandler()
    install_django(handler)
    hooked = handler.resolve_request
    install_django(handler)
    assert handler.resolve_request is hooked
    assert await _routes_of(handler, ["/items/1"]) == ["/items/{item_id}"]
