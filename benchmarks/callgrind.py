"""Instructions per request, counted by valgrind's callgrind: figures a loaded machine does not move.

    python benchmarks/callgrind.py                      # every configuration, a table
    python benchmarks/callgrind.py --configs bare,buttress-sentry --json out.json
    python benchmarks/callgrind.py --one NAME --requests N [--redis URL]   # one run

In process, each configuration is served N and then 3N requests (``app(scope, receive,
send)`` in one event loop, after a warm-up), each run in its own process under callgrind;
the difference of the two totals divided by 2N is what one request costs, with start-up
and imports cancelled out. Every configuration has a process of its own, so Sentry's
process-wide initialisation touches only the configurations named ``*-sentry``.

``server-*`` configurations run uvicorn itself under callgrind (1 worker, httptools,
uvloop, no access log, as the wrk part of ``run.py``) and send it N, then 3N requests on
one keep-alive connection from outside valgrind: the server process's instructions per
request, parsing and response writing included.

Redis runs outside valgrind (its own process on a free port), so only the client side is
counted, as in a server's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WARMUP = 50
#: The stack's limit here: one whose window does not end during a run. With the in-process
#: benchmark's ``1000000/second``, how many window ends a run met depended on how slowly
#: valgrind ran, and moved the counts by a few thousand instructions from run to run.
STEADY = "1000000000/hour"

#: One option each that the peer features of issue 14 turn on (the rest at their defaults).
FEATURES: dict[str, dict[str, Any]] = {
    "metrics-extra-labels": {"metrics_extra_labels": {"tenant": "request:X-Tenant"}},
    "metrics-duration-status": {"metrics_duration_status": True},
    "metrics-request-size": {"metrics_request_size": True},
    "access-log-fields": {
        "access_log_fields": "route,status,duration_ms,user_agent,response_bytes,query,referer"
    },
    "rate-limit-headers-both": {"rate_limit_header_style": "both"},
    "request-id-in-request": {"request_id_in_request": True},
    "rate-limit-cost": {"rate_limits": {"GET /items/{item_id}": {"limit": STEADY, "cost": 2}}},
}

IN_PROCESS = (
    "bare",
    "bare-sentry",
    "bare-fastapi",
    "layer-context",
    "layer-metrics",
    "layer-errors",
    "layer-ratelimit",
    "buttress",
    "buttress-sentry",
    "buttress-fastapi-sentry",
    *(f"feature-{name}" for name in FEATURES),
    "features-all",
    "buttress-multiprocess",
    "buttress-redis",
    "peer",
    "peer-sentry",
    "slowapi-redis",
)
SERVER = ("server-bare", "server-buttress")
CONFIGS = (*IN_PROCESS, *SERVER)
NEEDS_REDIS = {"buttress-redis", "slowapi-redis"}


def _stack(app: Any, **overrides: Any) -> Any:
    import apps

    s = apps.buttress_settings(**{"rate_limit": STEADY, **overrides})
    apps.configure_buttress_logging(s)
    return apps.buttress_stack(app, s)


def build(name: str, url: str) -> Any:
    """The app of one in-process configuration (see the module docstring)."""
    import apps

    if name == "bare":
        return apps.starlette_app()
    if name == "bare-fastapi":
        return apps.fastapi_app()
    if name == "bare-sentry":  # what buttress's Sentry initialisation costs a bare app
        app = apps.starlette_app()
        apps.init_buttress_sentry(apps.buttress_settings())
        return app
    if name.startswith("layer-"):
        s = apps.buttress_settings(rate_limit=STEADY)
        apps.configure_buttress_logging(s)
        return apps.buttress_layer(name[len("layer-") :], apps.starlette_app(), s)
    if name in ("buttress", "buttress-multiprocess"):  # (main() set the multiprocess dir)
        return _stack(apps.starlette_app())
    if name in ("buttress-sentry", "buttress-fastapi-sentry"):
        os.environ["SENTRY_DSN"] = apps.DSN  # so wrap() itself starts Sentry, as deployed
        app = apps.fastapi_app() if "fastapi" in name else apps.starlette_app()
        stack = _stack(app)
        apps.init_buttress_sentry(apps.buttress_settings())  # the dropping transport
        return stack
    if name.startswith("feature-"):
        return _stack(apps.starlette_app(), **FEATURES[name[len("feature-") :]])
    if name == "features-all":
        merged: dict[str, Any] = {}
        for options in FEATURES.values():
            merged.update(options)
        return _stack(apps.starlette_app(), **merged)
    if name == "buttress-redis":
        stack = _stack(apps.starlette_app(), rate_limit_storage=url)
        layer = stack
        while not hasattr(layer, "decider"):
            layer = layer.app
        # valgrind runs ~50x slower: a 50 ms budget would fail requests open uncounted.
        layer.decider.budget = 60.0
        return stack
    if name in ("peer", "peer-sentry"):
        import logging

        logging.basicConfig(stream=apps.devnull(), level=logging.INFO)
        if name == "peer-sentry":
            apps.init_peer_sentry()
        return apps.starlette_app(peer=True)
    if name == "slowapi-redis":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address
        from starlette.middleware import Middleware

        app = apps.starlette_app()
        slow, _ = apps.slowapi_middleware()
        app.state.limiter = Limiter(
            key_func=get_remote_address,
            default_limits=[STEADY],
            storage_uri=url,
            headers_enabled=True,
        )
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.user_middleware.insert(0, Middleware(slow))
        return app
    raise SystemExit(f"unknown configuration {name!r}; expected one of {', '.join(CONFIGS)}")


def serve(name: str, n: int, url: str) -> None:
    """Serve ``WARMUP + n`` requests in process and check every answer."""
    import inproc

    app = build(name, url)
    statuses: list[int] = []
    limited: list[bool] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
            names = {name.lower() for name, _ in message.get("headers", [])}
            limited.append(b"ratelimit-remaining" in names or b"x-ratelimit-remaining" in names)

    async def main() -> None:
        for _ in range(WARMUP + n):
            await app(inproc.OK.copy(), inproc.receive, send)

    asyncio.run(main())
    assert set(statuses) == {200}, sorted(set(statuses))
    if name in NEEDS_REDIS:  # every request decided by the limiter, none failed open
        assert all(limited), f"{limited.count(False)} requests without rate-limit headers"


def _total(path: str) -> int:
    match = re.search(r"^(?:summary|totals):\s*(\d+)", Path(path).read_text(), re.M)
    assert match, "no totals in the callgrind output"
    return int(match.group(1))


def _valgrind(out: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def in_process_total(name: str, n: int, url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [sys.executable, __file__, "--one", name, "--requests", str(n), "--redis", url]
        done = subprocess.run(
            _valgrind(out) + cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode:
            raise SystemExit(f"{name} failed under valgrind:\n{done.stderr[-3000:]}")
        return _total(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_total(name: str, n: int) -> int:
    """uvicorn under callgrind, ``WARMUP + n`` keep-alive requests, then a clean shutdown."""
    kind = name[len("server-") :]
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        port = _free_port()
        cmd = [
            sys.executable, "-m", "uvicorn", "server_app:app", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            "--http", "httptools", "--loop", loop, "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(
            _valgrind(out) + cmd,
            env={**os.environ, "BENCH_APP": kind, "PYTHONHASHSEED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 300
            while True:  # valgrind starts Python ~50x slower than usual
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name}: the server did not start")
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    time.sleep(0.2)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            for _ in range(WARMUP + n):
                conn.request("GET", "/items/42")
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
            conn.close()
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=300)
        if proc.returncode:
            raise SystemExit(f"{name} failed under valgrind:\n{err[-3000:].decode()}")
        return _total(out)


def per_request(name: str, n: int, url: str) -> float:
    """Instructions one request costs: (total at 3N - total at N) / 2N."""
    if name in SERVER:
        low, high = server_total(name, n), server_total(name, 3 * n)
    else:
        low, high = in_process_total(name, n, url), in_process_total(name, 3 * n, url)
    return (high - low) / (2 * n)


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def measure(configs: list[str], n: int, parallel: int = 2) -> dict[str, float]:
    """Instructions per request of each configuration (two valgrind runs each)."""
    if shutil.which("valgrind") is None:
        return {}
    # Bytecode first: a module whose .pyc is stale is compiled by the first process that
    # imports it, which would charge the compilation to whichever run came first.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(HERE.parent / "src"), str(HERE)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    redis = None
    url = ""
    if NEEDS_REDIS.intersection(configs) and shutil.which("redis-server"):
        redis, url, tmp = start_redis()
    elif NEEDS_REDIS.intersection(configs):
        configs = [c for c in configs if c not in NEEDS_REDIS]
    try:
        with ThreadPoolExecutor(parallel) as pool:
            futures = {name: pool.submit(per_request, name, n, url) for name in configs}
            results: dict[str, float] = {}
            for name, future in futures.items():
                results[name] = future.result()
                print(f"  callgrind: {name:32} {results[name] / 1000:9.1f}k", flush=True)
            return results
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait()
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default="")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.one:
        if args.one == "buttress-multiprocess":  # before prometheus-client is imported
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-mp-")
        serve(args.one, args.requests, args.redis)
        return
    per = measure(args.configs.split(","), args.requests, args.parallel)
    for name, value in per.items():
        base = per.get("server-bare" if name.startswith("server-") else "bare")
        over = f"{(value - base) / 1000:+9.1f}k over bare" if base is not None else ""
        print(f"{name:32} {value / 1000:9.1f}k  {over}")
    if args.json:
        args.json.write_text(json.dumps(per, indent=1))


if __name__ == "__main__":
    main()
