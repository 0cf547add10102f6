"""FastAPI sugar: the error contract written into the OpenAPI schema.

FastAPI is imported lazily, so ``buttress`` never needs it installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_SCHEMA", "document_errors", "rate_limit"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "title": "Detail",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {}},
                {"type": "object"},
            ],
        }
    },
}

_ALWAYS = {"429": "Too Many Requests", "500": "Internal Server Error"}


def document_errors(app: Any) -> Any:
    """Add the ``{"detail": ...}`` error schema and its responses to ``app.openapi()``.

    Every operation gets 429, 500 and 405 (a path answers 405 to the methods it does not
    serve); operations with path parameters also get 404. Responses the app documented
    itself win. Returns ``app``.
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            cached: dict[str, Any] = app.openapi_schema
            return cached
        schema: dict[str, Any] = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        ref = {"$ref": "#/components/schemas/Error"}
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                wanted = dict(_ALWAYS)
                if "{" in path:
                    wanted["404"] = "Not Found"
                wanted["405"] = "Method Not Allowed"  # every path refuses some methods
                responses = operation["responses"]
                for code, description in wanted.items():
                    responses.setdefault(
                        code,
                        {
                            "description": description,
                            "content": {"application/json": {"schema": ref}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return app


def rate_limit(limit: str) -> Any:
    """A route dependency enforcing ``limit`` (``"10/minute"``) on top of the middleware.

    It shares the stack's ``RateLimitMiddleware`` (through ``RateLimitMiddleware.check``):
    the same storage, strategy, key, allow list, counters and 429 contract
    (``Retry-After``, ``RateLimit-*``), counted per method and route template apart from
    the middleware's own limits::

        @app.post("/login", dependencies=[Depends(rate_limit("10/minute"))])
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    from buttress._request import RATELIMIT_KEY, record_of
    from buttress._routes import UNMATCHED, resolve_route
    from buttress.ratelimit_rules import parse_limits

    limits = parse_limits(limit, "rate_limit")  # validated at declaration, not per request

    async def dependency(request: Request) -> None:
        scope = request.scope
        middleware = scope.get(RATELIMIT_KEY)
        if middleware is None:
            raise RuntimeError(
                "buttress.fastapi.rate_limit() needs RateLimitMiddleware around the app; "
                "use buttress.wrap(app) or add RateLimitMiddleware(app, ...) yourself."
            )
        route = resolve_route(scope, record_of(scope)) or UNMATCHED
        name = f"dep {request.method} {route}"
        rejection = await middleware.check(scope, limits, name, route=route)
        if rejection is not None:
            raise HTTPException(rejection.status, rejection.detail, headers=rejection.headers)

    # Resolved here: FastAPI cannot see this function's local import of ``Request``.
    dependency.__annotations__ = {"request": Request, "return": None}
    return dependency
