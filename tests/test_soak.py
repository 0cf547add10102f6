"""Soak: a real uvicorn server with the whole stack and Redis storage under mixed load.

The short version runs in `make test`; `make soak` runs the long one (about a minute,
BUTTRESS_SOAK_SECONDS to change it). Afterwards the books must balance: the in-progress
gauge is back to 0, access-log lines, http_requests_total and the client's own count
agree, memory and open file descriptors are flat after warm-up, and nothing was logged
at error level except the 500s the traffic asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_server, stop

PATHS = ["/ok", "/items/{n}", "/nope/{n}", "/limited", "/boom", "/stream", "/stream-abort"]
WEIGHTS = [40, 20, 10, 10, 5, 10, 5]


async def _load(base: str, seconds: float, concurrency: int, seed: int) -> Counter[str]:
    """Mixed traffic for `seconds`, bounded in time and concurrency; returns statuses by kind."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind = rng.choices(PATHS, WEIGHTS)[0]
                path = kind.format(n=rng.randrange(10_000))
                counts["sent"] += 1
                if kind == "/stream-abort":
                    # a client that goes away mid-response
                    async with client.stream("GET", "/stream") as response:
                        async for _ in response.aiter_bytes():
                            break
                    counts["aborted"] += 1
                    continue
                response = await client.get(path)
                counts[str(response.status_code)] += 1
                if response.status_code >= 400:
                    assert "detail" in response.json()
                assert response.headers["x-request-id"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def _scrape(base: str) -> dict[str, list[Any]]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _soak(redis_url: str, seconds: float) -> None:
    env = {
        "BUTTRESS_RATE_LIMIT_STORAGE": redis_url,
        "BUTTRESS_RATE_LIMITS": json.dumps({"/limited": "5/second"}),
        "BUTTRESS_RATE_LIMIT": "100000/second",
        "BUTTRESS_LOG_LEVEL": "INFO",
    }
    proc, port = start_server(
        ["-m", "uvicorn", "tests.soak_served:app", "--port", "{port}", "--no-access-log"], env=env
    )
    base = f"http://127.0.0.1:{port}"
    server = psutil.Process(proc.pid)
    try:
        warm = asyncio.run(_load(base, min(3.0, seconds / 3), 8, seed=1))
        rss_warm, fds_warm = server.memory_info().rss, server.num_fds()
        main = asyncio.run(_load(base, seconds, 8, seed=2))
        time.sleep(0.5)  # let the server finish the aborted streams it is still writing
        rss_end, fds_end = server.memory_info().rss, server.num_fds()
        samples = _scrape(base)
    finally:
        output = stop(proc)
    sent = warm["sent"] + main["sent"]
    assert main["429"] > 0 and main["500"] > 0 and main["404"] > 0 and main["200"] > 0
    in_progress = [s.value for s in samples["http_requests_in_progress"]]
    assert sum(in_progress) == 0
    counted = sum(s.value for s in samples["http_requests"] if s.name == "http_requests_total")
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "buttress.access"]
    assert counted == sent == len(access)
    statuses = Counter(str(a["status"]) for a in access)
    for code in ("200", "404", "429", "500"):
        assert statuses[code] >= warm[code] + main[code]
    errors = [
        line
        for line in lines
        if line.get("level") in ("error", "critical") and line.get("logger") != "buttress.access"
    ]
    unexpected = [e for e in errors if "soak boom" not in json.dumps(e)]
    assert unexpected == [], unexpected[:3]
    # flat after warm-up: a few MB of slack for allocator noise, fds back where they were
    assert rss_end - rss_warm < 16 * 1024 * 1024, (rss_warm, rss_end)
    assert fds_end <= fds_warm + 4, (fds_warm, fds_end)


@pytest.mark.slow
def test_short_soak(redis_server: Any) -> None:
    """A few seconds of mixed load leave balanced books and no unexpected errors."""
    _soak(redis_server.url, 4.0)


@pytest.mark.soak
def test_long_soak(redis_server: Any) -> None:
    """About a minute of mixed load leaves balanced books, flat memory and file descriptors."""
    _soak(redis_server.url, float(os.environ.get("BUTTRESS_SOAK_SECONDS", "60")))
