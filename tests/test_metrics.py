"""Prometheus metrics: route-template labels, the /metrics endpoint, many workers."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import buttress
from buttress._registry import shared_counter
from buttress.config import ConfigError
from buttress.metrics import MetricsMiddleware
from buttress.metrics_endpoint import MULTIPROC_ENV, prepare_multiprocess_dir
from tests.apps import build
from tests.conftest import client_for, start_server, stop

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
ITEMS_GROUP = json.dumps({"^/items/[^/]+$": "/items/{item_id}"})
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def stack(framework: str, **overrides: Any) -> Any:
    """The whole buttress stack around the matrix app; the raw app gets a path group."""
    if framework == "raw":
        overrides.setdefault("metrics_path_groups", ITEMS_GROUP)
    return buttress.wrap(build(framework), configure_logging=False, access_log=False, **overrides)


async def get(client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response | None:
    """GET ``path``; None when the (unfinished) error layer let the app's exception out."""
    try:
        return await client.get(path, **kwargs)
    except (RuntimeError, buttress_exceptions()):
        return None


def buttress_exceptions() -> type[Exception]:
    from tests.apps import UserAlreadyExists

    return UserAlreadyExists


def requests_total(text: str, namespace: str = "") -> dict[tuple[str, str, str], float]:
    """``http_requests_total`` samples by (method, route, status), parsed from a scrape."""
    name = f"{namespace}_http_requests" if namespace else "http_requests"
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    out[labels["method"], labels["route"], labels["status"]] = sample.value
    return out


def require_promtool() -> None:
    """Skip without promtool on a developer's machine; in CI (CI=true) its absence fails."""
    if PROMTOOL is None:
        reason = "promtool is not installed (Debian package prometheus; `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


def sample_value(text: str, sample_name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    return None


# --- the route label ---------------------------------------------------------------------


async def test_route_label_is_the_template(framework: str) -> None:
    """/items/42 and /items/43 are counted together under route="/items/{item_id}"."""
    app = stack(framework)
    async with client_for(app) as client:
        assert (await client.get("/items/42")).status_code == 200
        assert (await client.get("/items/43")).status_code == 200
        await client.get("/ok")
        scrape = await client.get("/metrics")
    counts = requests_total(scrape.text)
    assert counts[("GET", "/items/{item_id}", "200")] == 2
    routes = {route for _, route, _ in counts}
    assert "/items/42" not in routes and "/metrics" not in routes
    if framework != "raw":
        assert counts[("GET", "/ok", "200")] == 1


async def test_random_unknown_paths_add_no_label_values(framework: str) -> None:
    """1000 random unknown paths (a scanner) all land in <unmatched>: no new label values."""
    app = stack(framework)
    rng = random.Random(4)
    async with client_for(app) as client:
        await client.get("/nothing-here")
        before = {route for _, route, _ in requests_total((await client.get("/metrics")).text)}
        for _ in range(1000):
            depth = rng.randint(1, 4)
            path = "".join(
                "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=8))
                for _ in range(depth)
            )
            await client.get(path)
        scrape = (await client.get("/metrics")).text
    counts = requests_total(scrape)
    assert {route for _, route, _ in counts} == before == {"<unmatched>"}
    assert counts[("GET", "<unmatched>", "404")] == 1001


async def test_path_groups_name_paths_of_apps_without_templates() -> None:
    """BUTTRESS_METRICS_PATH_GROUPS maps raw paths to templates; the rest is <unmatched>."""
    groups = json.dumps({"^/users/[0-9]+$": "/users/{id}", "^/ok$": "/ok"})
    app = stack("raw", metrics_path_groups=groups)
    async with client_for(app) as client:
        await client.get("/ok")
        await client.get("/users/12")
        await client.get("/users/abc")
        counts = requests_total((await client.get("/metrics")).text)
    assert counts == {
        ("GET", "/ok", "200"): 1,
        ("GET", "/users/{id}", "404"): 1,
        ("GET", "<unmatched>", "404"): 1,
    }


async def test_route_values_are_capped() -> None:
    """Past BUTTRESS_METRICS_MAX_ROUTES distinct routes, new ones are counted as <other>."""
    app = stack("starlette", metrics_max_routes=2)
    async with client_for(app) as client:
        for path in ("/ok", "/items/1", "/log", "/stream", "/ok"):
            await client.get(path)
        counts = requests_total((await client.get("/metrics")).text)
    assert counts == {
        ("GET", "/ok", "200"): 2,
        ("GET", "/items/{item_id}", "200"): 1,
        ("GET", "<other>", "200"): 2,
    }


async def test_unknown_methods_are_other() -> None:
    """Only standard methods become label values; anything else is OTHER."""
    app = stack("starlette")
    async with client_for(app) as client:
        await client.request("BREW", "/ok")
        await client.post("/ok")
        counts = requests_total((await client.get("/metrics")).text)
    assert counts == {("OTHER", "/ok", "405"): 1, ("POST", "/ok", "405"): 1}


# --- the status label --------------------------------------------------------------------


async def test_status_is_what_the_client_got(framework: str) -> None:
    """A crash counts as 500 and a 404 as 404, with the route it happened on."""
    app = stack(framework)
    async with client_for(app) as client:
        response = await get(client, "/boom")
        assert response is None or response.status_code == 500
        await client.get("/nope")
        counts = requests_total((await client.get("/metrics")).text)
    boom_route = "<unmatched>" if framework == "raw" else "/boom"
    assert counts[("GET", boom_route, "500")] == 1
    assert counts[("GET", "<unmatched>", "404")] == 1


async def test_rate_limited_requests_count_as_429() -> None:
    """The rate limiter's 429 (an inner layer) is the status counted.

    The limiter answers before the app routes, so no template is known for the 429 unless
    the limiter names one in ``scope["buttress.route"]``.
    """
    app = stack("starlette", rate_limit="1/minute")
    async with client_for(app) as client:
        assert (await client.get("/ok")).status_code == 200
        assert (await client.get("/ok")).status_code == 429
        counts = requests_total((await client.get("/metrics")).text)
    assert counts[("GET", "/ok", "200")] == 1
    assert sum(v for (_, _, status), v in counts.items() if status == "429") == 1


async def test_group_status() -> None:
    """BUTTRESS_METRICS_GROUP_STATUS=true reports 2xx, 4xx, ... instead of codes."""
    app = stack("starlette", metrics_group_status=True)
    async with client_for(app) as client:
        await client.get("/ok")
        await client.get("/nope")
        counts = requests_total((await client.get("/metrics")).text)
    assert counts == {("GET", "/ok", "2xx"): 1, ("GET", "<unmatched>", "4xx"): 1}


# --- the in-progress gauge ---------------------------------------------------------------


def _in_progress(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("http_requests_in_progress", {"method": "GET"})


async def test_in_progress_returns_to_zero_after_a_crash() -> None:
    """A request whose app raises leaves the in-progress gauge at 0 and counts a 500."""
    registry = CollectorRegistry()

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        assert _in_progress(registry) == 1
        raise RuntimeError("crash")

    app = MetricsMiddleware(crash, registry=registry)
    async with client_for(app) as client:
        with pytest.raises(RuntimeError):
            await client.get("/x")
    assert _in_progress(registry) == 0
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "<unmatched>", "status": "500"}
    )


async def test_in_progress_returns_to_zero_after_a_cancelled_request() -> None:
    """A cancelled request (the server's task cancelled) is counted as 499, gauge back at 0."""
    registry = CollectorRegistry()
    entered = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await asyncio.Event().wait()

    app = MetricsMiddleware(slow, registry=registry)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: Any) -> None:
        raise AssertionError

    scope = {"type": "http", "method": "GET", "path": "/slow", "headers": [], "root_path": ""}
    task = asyncio.create_task(app(scope, receive, send))
    await entered.wait()
    assert _in_progress(registry) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _in_progress(registry) == 0
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "<unmatched>", "status": "499"}
    )


async def test_in_progress_returns_to_zero_after_a_disconnect() -> None:
    """An app that gives up when the client disconnects: counted as 499, gauge back at 0."""
    registry = CollectorRegistry()

    async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    app = MetricsMiddleware(
        waits_for_disconnect, registry=registry
    )
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "root_path": ""}
    await app(scope, receive, send)
    assert _in_progress(registry) == 0
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "<unmatched>", "status": "499"}
    )


# --- the endpoint ------------------------------------------------------------------------


async def test_exposition_parses_and_passes_promtool(framework: str, tmp_path: Path) -> None:
    """The scrape lists every metric; prometheus-client parses it and promtool accepts it."""
    app = stack(framework)
    async with client_for(app) as client:
        await client.get("/items/1")
        await client.get("/stream")
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(scrape.text)}
    assert {
        "http_requests",
        "http_request_duration_seconds",
        "http_requests_in_progress",
        "http_response_size_bytes",
    } <= names
    route = "<unmatched>" if framework == "raw" else "/stream"
    size = sample_value(scrape.text, "http_response_size_bytes_sum", method="GET", route=route)
    assert size == len(b"chunk-0\n") * 3
    if PROMTOOL or os.environ.get("CI") == "true":
        require_promtool()
        result = await asyncio.to_thread(promtool, "check", "metrics", stdin=scrape.text)
        assert result.returncode == 0, result.stdout + result.stderr


async def test_scrapes_are_not_counted() -> None:
    """GET /metrics is answered by the layer for any app and never counted."""
    app = stack("raw")
    async with client_for(app) as client:
        for _ in range(3):
            await client.get("/metrics")
        head = await client.head("/metrics")
        text = (await client.get("/metrics")).text
    assert head.status_code == 200 and head.content == b""
    assert requests_total(text) == {}


async def test_other_methods_on_the_metrics_path_are_405() -> None:
    """POST /metrics is a 405 in the JSON contract, with Allow."""
    async with client_for(stack("starlette")) as client:
        response = await client.post("/metrics")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"detail": "Method Not Allowed"}


async def test_token_is_required_when_set() -> None:
    """With BUTTRESS_METRICS_TOKEN, /metrics answers 401 {"detail"} unless the bearer matches."""
    app = stack("starlette", metrics_token="s3cret")
    async with client_for(app) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert set(response.json()) == {"detail"}
    assert right.status_code == 200
    assert "http_requests_in_progress" in right.text


async def test_gzip_when_accepted() -> None:
    """Accept-Encoding: gzip gets a gzipped body; q=0 or identity gets it uncompressed."""
    app = stack("starlette")
    async with client_for(app) as client:
        await client.get("/ok")
        async with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as zipped:
            raw = b"".join([chunk async for chunk in zipped.aiter_raw()])
        refused = await client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0"})
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) == len(raw)
    assert requests_total(gzip.decompress(raw).decode())[("GET", "/ok", "200")] == 1
    assert "content-encoding" not in refused.headers
    assert "content-encoding" not in plain.headers
    assert requests_total(plain.text)[("GET", "/ok", "200")] == 1


async def test_openmetrics_with_a_trace_id_exemplar(framework: str) -> None:
    """Scraped as OpenMetrics, a request's duration carries its trace id as an exemplar."""
    app = stack(framework)
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    async with client_for(app) as client:
        await client.get("/items/7", headers={"traceparent": traceparent})
        scrape = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        sample.exemplar
        for family in openmetrics_families(scrape.text)
        if family.name == "http_request_duration_seconds"
        for sample in family.samples
        if sample.exemplar is not None
    ]
    assert exemplars and exemplars[0].labels == {"trace_id": TRACE_ID}


async def test_namespace_prefixes_every_name() -> None:
    """BUTTRESS_METRICS_NAMESPACE=shop gives shop_http_requests_total and friends."""
    app = stack("starlette", metrics_namespace="shop")
    async with client_for(app) as client:
        await client.get("/ok")
        text = (await client.get("/metrics")).text
    assert requests_total(text, "shop") == {("GET", "/ok", "200"): 1}
    assert "shop_http_requests_in_progress" in text and "\nhttp_requests" not in text


def test_bad_namespace_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A namespace that is not a metric-name prefix fails at start-up, naming where it came from."""
    monkeypatch.setenv("BUTTRESS_METRICS_NAMESPACE", "shop-api")
    with pytest.raises(ConfigError, match="BUTTRESS_METRICS_NAMESPACE='shop-api'"):
        buttress.Settings.from_env()
    with pytest.raises(ConfigError, match="metrics_namespace='my-app'"):
        stack("raw", metrics_namespace="my-app")
    with pytest.raises(ConfigError, match="namespace='my-app'"):
        MetricsMiddleware(build("raw"), namespace="my-app")


async def test_custom_metrics_path_and_disabled_endpoint() -> None:
    """BUTTRESS_METRICS_PATH moves the endpoint; empty leaves every path to the app."""
    async with client_for(stack("starlette", metrics_path="/_internal/prom")) as client:
        assert (await client.get("/_internal/prom")).status_code == 200
        assert (await client.get("/metrics")).status_code == 404
    async with client_for(stack("starlette", metrics_path="")) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_metrics_can_be_turned_off() -> None:
    """BUTTRESS_METRICS=false leaves the metrics layer out of the stack."""
    async with client_for(stack("starlette", metrics=False)) as client:
        assert (await client.get("/metrics")).status_code == 404


# --- registries --------------------------------------------------------------------------


async def test_building_the_stack_twice_never_duplicates() -> None:
    """wrap() many times, with fresh or one shared registry, never raises Duplicated timeseries."""
    for _ in range(3):
        stack("starlette")
    registry = CollectorRegistry()
    first = stack("starlette", registry=registry)
    second = stack("starlette", registry=registry)
    async with client_for(first) as a, client_for(second) as b:
        await a.get("/ok")
        await b.get("/ok")
        text = (await a.get("/metrics")).text
    assert requests_total(text) == {("GET", "/ok", "200"): 2}


@pytest.mark.parametrize("alone", [True, False])
async def test_size_histogram_buckets_are_cumulative(alone: bool) -> None:
    """Body sizes land in the right ``le`` buckets, alone or under the context layer."""

    async def sized(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * int(scope["path"][1:])})

    registry = CollectorRegistry()
    settings = buttress.Settings.from_env({})
    if alone:
        app: Any = MetricsMiddleware(sized, registry=registry)
    else:
        app = buttress.wrap(sized, settings, configure_logging=False, registry=registry)
    async with client_for(app) as client:
        for size in (0, 100, 101, 5000):
            await client.get(f"/{size}")

    def bucket(le: str) -> float | None:
        labels = {"method": "GET", "route": "<unmatched>", "le": le}
        return registry.get_sample_value("http_response_size_bytes_bucket", labels)

    assert [bucket(le) for le in ("100.0", "1000.0", "10000.0", "+Inf")] == [2, 3, 4, 4]
    labels = {"method": "GET", "route": "<unmatched>"}
    assert registry.get_sample_value("http_response_size_bytes_count", labels) == 4
    assert registry.get_sample_value("http_response_size_bytes_sum", labels) == 5201
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 4


def test_shared_counter_is_idempotent() -> None:
    """shared_counter returns the one counter of a name per registry; a clash is explained."""
    registry = CollectorRegistry()
    first = shared_counter("retries_total", "Retries.", ("function",), registry=registry)
    again = shared_counter("retries_total", "Retries.", ("function",), registry=registry)
    assert first is again and isinstance(first, Counter)
    first.labels("f").inc()
    assert registry.get_sample_value("retries_total", {"function": "f"}) == 1
    other = shared_counter("retries_total", "Retries.", ("function",), registry=CollectorRegistry())
    assert other is not first
    with pytest.raises(ValueError, match="already registered"):
        shared_counter("retries_total", "Retries.", ("other",), registry=registry)


# --- many workers ------------------------------------------------------------------------


def test_prepare_multiprocess_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset with workers > 1: a fresh directory is exported; set: it must be writable."""
    # set, then delete: monkeypatch then restores "unset" after the test, even though
    # prepare_multiprocess_dir exports the variable itself
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(MULTIPROC_ENV)
    assert prepare_multiprocess_dir(1) is None
    made = prepare_multiprocess_dir(2)
    assert made is not None and os.path.isdir(made) and os.listdir(made) == []
    assert os.environ[MULTIPROC_ENV] == made
    assert prepare_multiprocess_dir(4) == made
    shutil.rmtree(made)

    missing = str(tmp_path / "missing")
    monkeypatch.setenv(MULTIPROC_ENV, missing)
    with pytest.raises(ConfigError, match=f"{MULTIPROC_ENV}='{missing}' is not a writable"):
        prepare_multiprocess_dir(2)
    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv(MULTIPROC_ENV, str(a_file))
    with pytest.raises(ConfigError, match="mkdir -p"):
        prepare_multiprocess_dir(2)


def test_dead_workers_live_gauges_are_removed(tmp_path: Path) -> None:
    """At scrape time, a dead worker's live gauge is dropped and its counter kept (files named by prometheus-client)."""
    from buttress.metrics_endpoint import _reap_dead_workers

    worker = (
        "from prometheus_client import Counter, Gauge\n"
        "Gauge('in_progress', 'x', multiprocess_mode='livesum').inc()\n"
        "Counter('served', 'x').inc()\n"
    )
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    dead = subprocess.run([sys.executable, "-c", worker], env=env, check=True)
    assert dead.returncode == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) == 2, made  # one live gauge file, one counter file
    _reap_dead_workers(str(tmp_path))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith("counter"), left


def test_world_writable_multiproc_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR anyone can write to is refused: planted files would be served."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(MULTIPROC_ENV, str(shared))
    with pytest.raises(ConfigError, match="writable by every user"):
        prepare_multiprocess_dir(2)
    shared.chmod(0o700)
    assert prepare_multiprocess_dir(2) == str(shared)


@pytest.mark.slow
def test_two_uvicorn_workers_add_up_in_one_scrape(tmp_path: Path) -> None:
    """Two real uvicorn workers share PROMETHEUS_MULTIPROC_DIR; one scrape sums both."""
    env = {MULTIPROC_ENV: str(tmp_path)}
    proc, port = start_server(
        [
            "-m",
            "uvicorn",
            "tests.metrics_served:app",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "2",
            "--no-access-log",
        ],
        env,
    )
    try:
        pids: set[str] = set()
        sent = 0
        base = f"http://127.0.0.1:{port}"
        # A fresh connection per request lets the kernel hand requests to either worker.
        with httpx.Client(
            base_url=base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            # Bounded in count and time; a loaded machine may start the second worker late.
            deadline = time.monotonic() + 30
            while (len(pids) < 2 or sent < 40) and sent < 20_000 and time.monotonic() < deadline:
                response = client.get("/pid")
                assert response.status_code == 200
                pids.add(response.text)
                sent += 1
            assert len(pids) == 2, f"one worker served all {sent} requests"
            scrape = client.get("/metrics")
        counts = requests_total(scrape.text)
        assert counts == {("GET", "/pid", "200"): sent}
        assert sample_value(scrape.text, "http_requests_in_progress", method="GET") == 0
    finally:
        output = stop(proc)
    assert "Traceback" not in output, output


# --- deploy files ------------------------------------------------------------------------

RULES_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'http_requests_total{{job="api",method="GET",route="/ok",status="200"}}'
        values: '0+540x120'
      - series: 'http_requests_total{{job="api",method="GET",route="/ok",status="500"}}'
        values: '0+60x120'
    alert_rule_test:
      - eval_time: 90m
        alertname: HTTPErrorBudgetFastBurn
        exp_alerts:
          - exp_labels: {{severity: page, job: api}}
            exp_annotations:
              summary: "api: 5xx ratio 10% burns the error budget fast"
              description: "More than 1.44% of requests failed with a 5xx over the last hour and the last 5 minutes."
      - eval_time: 90m
        alertname: HTTPLatencySLOBurn
        exp_alerts: []
"""


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """deploy/prometheus-alerts.yml is valid, and a 10% 5xx ratio fires the fast-burn page."""
    require_promtool()
    rules = ROOT / "deploy" / "prometheus-alerts.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    unit = tmp_path / "rules_test.yml"
    unit.write_text(RULES_TEST.format(rules=rules))
    tested = promtool("test", "rules", str(unit))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_grafana_dashboard_uses_the_metrics() -> None:
    """deploy/grafana-dashboard.json is valid JSON whose panels query buttress metrics."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_progress",
        'status="429"',
    ):
        assert name in exprs
    assert "histogram_quantile(0.99" in exprs
