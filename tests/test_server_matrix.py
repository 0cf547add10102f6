"""The core promises on every server we name, with one and two workers.

Each request echoes an id, is one JSON access line, errors keep the contract, routes are
labelled by template, and one scrape adds up every worker (with PROMETHEUS_MULTIPROC_DIR).
Without that directory, several workers are detected and warned about.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import servers

REQUESTS = 16


def _items_counted(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["route"] == "/items/{item_id}":
                    total += sample.value
    return total


def _json_lines(out: str) -> list[dict[str, Any]]:
    lines = []
    for line in out.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("server", servers.SERVERS)
def test_core_promises_hold_on_every_server(server: str, workers: int, tmp_path: Path) -> None:
    """Ids echoed, one access line each, the contract, template labels, counts adding up."""
    env = {"TEST_WRAPPED": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc, port = servers.start(server, "tests.served:wrapped", workers=workers, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            responses = [client.get(f"/items/{i}") for i in range(REQUESTS)]
            boom = client.get("/boom")
            missing = client.get("/nothing-here")
            scrape = client.get("/metrics").text
    finally:
        out = servers.stop(proc)
    assert {r.status_code for r in responses} == {200}
    assert all(r.headers.get("x-request-id") for r in [*responses, boom, missing])
    assert (boom.status_code, boom.json()) == (500, {"detail": "Internal server error"})
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert _items_counted(scrape) == REQUESTS
    access = [line for line in _json_lines(out) if line.get("logger") == "buttress.access"]
    ids = [line["request_id"] for line in access]
    assert len(ids) == len(set(ids)) == REQUESTS + 2  # one line per request, the scrape excluded
    assert {line["route"] for line in access if line["status"] == 200} == {"/items/{item_id}"}


@pytest.mark.slow
@pytest.mark.parametrize("server", ["hypercorn", "granian"])
def test_several_workers_without_a_multiprocess_dir_are_warned_about(server: str) -> None:
    """Two workers and no PROMETHEUS_MULTIPROC_DIR: the first scrape warns that counts are per worker."""
    proc, port = servers.start(server, "tests.served:wrapped", workers=2, env={"TEST_WRAPPED": "1"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(6):
                client.get("/metrics")
    finally:
        out = servers.stop(proc)
    warnings = [x for x in _json_lines(out) if x.get("event") == "metrics_without_multiprocess_dir"]
    assert warnings and warnings[0]["workers"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("server", servers.SERVERS)
def test_access_log_fields_come_from_what_the_server_received(server: str) -> None:
    """The query (credentials masked), HTTP version and referer as each server hands them over."""
    env = {
        "TEST_WRAPPED": "1",
        "BUTTRESS_ACCESS_LOG_FIELDS": "route,status,query,http_version,referer",
    }
    proc, port = servers.start(server, "tests.served:wrapped", env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            client.get(
                "/items/7?page=2&api_key=sk-live-123456",
                headers={"Referer": "https://shop.example/cart"},
            )
    finally:
        out = servers.stop(proc)
    (line,) = [x for x in _json_lines(out) if x.get("logger") == "buttress.access"]
    assert line["route"] == "/items/{item_id}" and line["status"] == 200
    assert line["query"].startswith("page=2&api_key=") and "sk-live-123456" not in line["query"]
    assert line["http_version"] == "1.1"
    assert line["referer"] == "https://shop.example/cart"
    assert "user_agent" not in line
