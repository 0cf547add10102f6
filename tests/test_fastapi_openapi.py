"""document_errors: the error contract appears in FastAPI's OpenAPI schema, which stays valid."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from buttress.fastapi import document_errors
from tests.conftest import client_for


def build_api() -> Any:
    """A small FastAPI app: a plain route, a path parameter, a validated query, a POST."""
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    items = APIRouter(prefix="/items")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @items.get("/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    @app.get("/validate")
    async def validate_n(n: int) -> dict[str, int]:
        return {"n": n}

    @app.post("/ok", responses={500: {"description": "Documented by the app"}})
    async def post_ok() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(items)
    return app


def test_every_operation_documents_errors() -> None:
    """Every operation gets 429/500/405 with the Error schema; path parameters add 404."""
    app = document_errors(build_api())
    schema = app.openapi()
    validate(schema)
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"]
    for path, item in schema["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            for code in ("429", "500", "405"):
                if "content" in responses[code]:
                    ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error"
            assert ("404" in responses) == ("{" in path)
    # FastAPI's own 422 documentation is left as it was.
    assert "422" in schema["paths"]["/validate"]["get"]["responses"]
    # What the app documented itself wins.
    assert schema["paths"]["/ok"]["post"]["responses"]["500"]["description"] == (
        "Documented by the app"
    )


async def test_schema_served_by_the_app() -> None:
    """/openapi.json serves the documented schema, generated once."""
    app = document_errors(build_api())
    async with client_for(app) as client:
        served = (await client.get("/openapi.json")).json()
    assert "Error" in served["components"]["schemas"]
    assert app.openapi() is app.openapi()
