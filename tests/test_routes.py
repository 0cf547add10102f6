"""The shared route-template resolver, across frameworks, routers, mounts and root paths."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from buttress._request import RequestRecord
from buttress._routes import resolve_route
from buttress.adapters import ROUTE_KEY, install_adapters
from tests.apps import build, fastapi_nested_app, starlette_mounted_app


class Recorder:
    """An outer ASGI layer that resolves the route after the app ran, like the buttress layers."""

    def __init__(self, app: Any, *, with_info: bool = True) -> None:
        install_adapters(app)
        self.app = app
        self.with_info = with_info
        self.routes: list[str | None] = []
        self.infos: list[RequestRecord] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestRecord("rid", None, scope.get("root_path", "")) if self.with_info else None
        try:
            await self.app(scope, receive, send)
        finally:
            self.routes.append(resolve_route(scope, info))
            if info is not None:
                self.infos.append(info)


async def _routes_of(
    app: Any, paths: list[str], root_path: str = "", *, with_info: bool = True
) -> list[str | None]:
    recorder = Recorder(app, with_info=with_info)
    transport = httpx.ASGITransport(app=recorder, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path in paths:
            await client.get(root_path + path)
    return recorder.routes


async def test_template_of_item_route(framework: str) -> None:
    """/items/42 resolves to /items/{item_id} in every framework that exposes templates."""
    routes = await _routes_of(build(framework), ["/items/42", "/ok"])
    if framework == "raw":
        assert routes == [None, None]
    else:
        assert routes == ["/items/{item_id}", "/ok"]


async def test_server_root_path_is_not_part_of_the_template(framework: str) -> None:
    """Under a server-level root path (--root-path /pre) every framework agrees on the label."""
    routes = await _routes_of(build(framework), ["/items/42"], "/pre")
    assert routes == [None if framework == "raw" else "/items/{item_id}"]


async def test_not_found_has_no_template(framework: str) -> None:
    """A 404 resolves to None in every framework (the metrics label it <unmatched>)."""
    assert await _routes_of(build(framework), ["/no/such/thing"]) == [None]


@pytest.mark.parametrize("root_path", ["", "/prefix"])
async def test_fastapi_nested_routers_and_mounts(root_path: str) -> None:
    """Newest FastAPI: include_router prefixes, mounted sub-apps and root_path all resolve."""
    routes = await _routes_of(
        fastapi_nested_app(),
        ["/api/v1/users/7", "/plain/1", "/sub/things/3", "/api/v1/nope"],
        root_path,
    )
    assert routes == ["/api/v1/users/{user_id}", "/plain/{x}", "/sub/things/{thing_id}", None]


@pytest.mark.parametrize("root_path", ["", "/prefix"])
async def test_starlette_nested_mounts(root_path: str) -> None:
    """Starlette mounts add their prefixes; a 404 inside a mount has no template.

    A mounted plain ASGI app is labelled by its mount: ``/raw/{path}``.
    """
    paths = ["/a/1", "/m/n/5", "/m/zz", "/raw/ok"]
    routes = await _routes_of(starlette_mounted_app(), paths, root_path)
    assert routes == ["/a/{x}", "/m/n/{id}", None, "/raw/{path}"]


async def test_without_info_the_route_tree_still_gives_the_template() -> None:
    """Without a RequestRecord the mounts' templates still come from the router's tree."""
    routes = await _routes_of(starlette_mounted_app(), ["/m/n/5"], "/prefix", with_info=False)
    assert routes == ["/m/n/{id}"]


async def test_answer_is_cached_on_the_request_info() -> None:
    """The first resolution is kept on RequestRecord; later calls return it unchanged."""
    recorder = Recorder(build("starlette"))
    transport = httpx.ASGITransport(app=recorder)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.get("/items/1")
    info = recorder.infos[0]
    assert info.route_resolved and info.route == "/items/{item_id}"
    assert resolve_route({"type": "http", ROUTE_KEY: "/changed"}, info) == "/items/{item_id}"


def test_adapter_key_wins() -> None:
    """scope["buttress.route"] set by an adapter wins over what the framework left."""
    scope = {"type": "http", ROUTE_KEY: "/x/{y}", "path_template": "/other"}
    assert resolve_route(scope) == "/x/{y}"
    assert resolve_route({"type": "http", "path_template": "/lit/{id}"}) == "/lit/{id}"
    assert resolve_route({"type": "http"}) is None
