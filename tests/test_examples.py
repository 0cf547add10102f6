"""examples/: every example imports, serves the same small service, and runs by its header command."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, client_for, start_server, stop

EXAMPLES = ROOT / "examples"
SERVICES = ("raw_app", "starlette_app", "fastapi_app", "litestar_app", "quart_app")
IN_PROCESS = (*SERVICES, "retry_app")
ALL = (*SERVICES, "django_app", "retry_app")


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh copy of ``examples/<name>.py`` (fresh app, fresh limiter state)."""
    spec = importlib.util.spec_from_file_location(
        f"examples_{name}_{uuid.uuid4().hex}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Litestar resolves handler annotations through sys.modules[handler.__module__].
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, logs: Any) -> Any:
    """The wrapped ``app`` of the example named by the test's parameter; logs go to ``logs``."""
    monkeypatch.setenv("BUTTRESS_CONFIGURE_LOGGING", "false")
    return load(request.param, monkeypatch).app


def run_command(name: str) -> str:
    """The ``uvicorn ...`` command in the example's header comment."""
    text = (EXAMPLES / f"{name}.py").read_text()
    match = re.search(r"^Run:\s+(uvicorn \S+)", text, re.MULTILINE)
    assert match, f"examples/{name}.py has no 'Run:  uvicorn ...' line in its header"
    return match.group(1)


@pytest.mark.parametrize("example", SERVICES, indirect=True)
async def test_example_serves_the_service(example: Any, logs: Any) -> None:
    """Each framework's example answers / and /items/{item_id} with a request id."""
    async with client_for(example) as client:
        index = await client.get("/")
        item = await client.get("/items/42")
    assert index.status_code == 200
    assert index.json()["service"] == "example"
    assert item.json() == {"item_id": "42"}
    assert re.fullmatch(r"[0-9a-f]{32}", item.headers["x-request-id"])
    assert [line["status"] for line in logs.access] == [200, 200]


@pytest.mark.parametrize("example", SERVICES, indirect=True)
async def test_example_answers_errors_with_the_contract(example: Any) -> None:
    """An unhandled error in any example is the JSON 500 of the error contract."""
    async with client_for(example) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}


@pytest.mark.parametrize("example", SERVICES, indirect=True)
async def test_example_rate_limits_items(example: Any) -> None:
    """The examples limit /items/{item_id} to 10 a minute per client: the 11th is a 429."""
    async with client_for(example) as client:
        statuses = [(await client.get(f"/items/{i}")).status_code for i in range(11)]
        other = await client.get("/")
    assert statuses == [200] * 10 + [429]
    assert other.status_code == 200


@pytest.mark.parametrize("example", SERVICES, indirect=True)
async def test_example_serves_metrics_by_route_template(example: Any) -> None:
    """/metrics is served and labels requests by route template, not by raw path."""
    async with client_for(example) as client:
        await client.get("/items/42")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'route="/items/{item_id}"' in response.text
    assert "/items/42" not in response.text


@pytest.mark.parametrize("example", ["retry_app"], indirect=True)
async def test_retry_example_recovers_and_logs_with_the_request_id(example: Any, logs: Any) -> None:
    """The retry example retries its flaky dependency twice and answers 200."""
    async with client_for(example) as client:
        response = await client.get("/prices/42", headers={"X-Request-ID": "retry-example-1"})
    assert response.status_code == 200
    assert response.json()["item_id"] == "42"
    retrying = logs.events("retrying")
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert {e["request_id"] for e in retrying} == {"retry-example-1"}
    assert retrying[0]["error_type"] == "ConnectionError"
    async with client_for(example) as client:
        metrics = await client.get("/metrics")
    assert 'retries_total{function="examples_retry_app' in metrics.text
    assert 'outcome="recovered"} 1.0' in metrics.text


@pytest.mark.parametrize("example", ["retry_app"], indirect=True)
async def test_retry_example_exhausted_is_the_500_contract(example: Any, logs: Any) -> None:
    """When the dependency keeps failing, the original error reaches the JSON 500."""
    async with client_for(example) as client:
        response = await client.get("/prices/42?failures=9")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert len(logs.events("retries_exhausted")) == 1


def test_every_example_names_its_own_run_command() -> None:
    """Each example's header says how to run it: ``uvicorn examples.<name>:app``."""
    for name in ALL:
        assert run_command(name) == f"uvicorn examples.{name}:app"


_DJANGO_SCRIPT = """
import asyncio, json, os
os.environ["BUTTRESS_CONFIGURE_LOGGING"] = "false"
import httpx
from examples.django_app import app

async def main():
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        out = {}
        for path in ["/", "/items/42", "/boom"]:
            r = await client.get(path)
            out[path] = [r.status_code, r.text, r.headers.get("x-request-id")]
        print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.slow
def test_django_example_in_its_own_process() -> None:
    """The self-contained Django example configures Django itself and serves the service.

    Django settings exist once per process and the test matrix configures its own, so this
    example runs in a fresh interpreter.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _DJANGO_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    status, body, request_id = out["/"]
    assert status == 200
    assert json.loads(body) == {"service": "example", "framework": "django"}
    assert request_id
    assert out["/items/42"][:2] == [200, '{"item_id": "42"}']
    assert out["/boom"][0] == 500
    assert out["/boom"][1].startswith("{"), out["/boom"][1]
    assert json.loads(out["/boom"][1]) == {"detail": "Internal server error"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_example_runs_with_its_header_command(name: str) -> None:
    """``uvicorn examples.<name>:app`` from the header serves the example on a real socket."""
    command = run_command(name).split()
    proc, port = start_server(["-m", *command, "--host", "127.0.0.1", "--port", "{port}"])
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert response.status_code == 200
        assert "x-request-id" in response.headers
    finally:
        output = stop(proc)
    assert "Traceback" not in output


def test_examples_directory_has_every_framework() -> None:
    """There is one example per supported framework, plus the retry example."""
    present = {p.stem for p in Path(EXAMPLES).glob("*_app.py")}
    assert present == set(ALL)


async def test_demo_app_shows_the_whole_stack(monkeypatch: pytest.MonkeyPatch, logs: Any) -> None:
    """``buttress demo``'s app: ids, a 5-per-10 s limit, a retried dependency in /metrics."""
    from buttress._demo import DEMO_CURLS, demo_app

    monkeypatch.setenv("BUTTRESS_CONFIGURE_LOGGING", "false")
    monkeypatch.setenv("BUTTRESS_ENV", "production")  # the environment wins over the demo
    app = demo_app()
    async with client_for(app) as client:
        index = await client.get("/")
        items = [(await client.get("/items/42")).status_code for _ in range(6)]
        flaky = await client.get("/flaky")
        slow = await client.get("/slow?seconds=0")
        metrics = await client.get("/metrics")
    assert index.status_code == 200
    assert "x-request-id" in index.headers
    assert items == [200] * 5 + [429]
    assert flaky.json() == {"item": "widget", "in_stock": 7}
    assert slow.json() == {"slept": 0.0}
    assert 'retries_total{function="demo.inventory",outcome="recovered"} 1.0' in metrics.text
    assert logs.events("retrying")  # JSON logs: BUTTRESS_ENV=production was honoured
    assert all(line.startswith("curl ") and "{base}" in line for line in DEMO_CURLS)
