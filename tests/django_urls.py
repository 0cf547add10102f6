"""URLconf of the Django app in the framework matrix (see tests/apps.py)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET

from tests.apps import UserAlreadyExists, _boom, _chunks, _log_in_handler


@require_GET
async def ok(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@require_GET
async def item(request: HttpRequest, item_id: str) -> HttpResponse:
    return JsonResponse({"item_id": item_id})


@require_GET
async def log(request: HttpRequest) -> HttpResponse:
    return HttpResponse(json.dumps(_log_in_handler()), content_type="application/json")


@require_GET
async def boom(request: HttpRequest) -> HttpResponse:
    _boom()
    raise AssertionError


@require_GET
async def conflict(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("User already exists", status=409, content_type="text/plain")
    response["X-Conflict"] = "yes"
    return response


@require_GET
async def domain(request: HttpRequest) -> HttpResponse:
    raise UserAlreadyExists("User 7 already exists")


@require_GET
async def stream(request: HttpRequest) -> Any:
    return StreamingHttpResponse(_chunks(), content_type="text/plain")


urlpatterns = [
    path("ok", ok),
    path("items/<str:item_id>", item),
    path("log", log),
    path("boom", boom),
    path("conflict", conflict),
    path("domain", domain),
    path("stream", stream),
]
