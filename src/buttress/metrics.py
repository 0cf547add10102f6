"""Placeholder: the metrics layer (issue 4) replaces this module."""

from __future__ import annotations

from typing import Any

from buttress._asgi import ASGIApp, Receive, Scope, Send


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, **_: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
