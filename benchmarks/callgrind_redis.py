"""Instructions per request with a Redis storage, counted by valgrind's callgrind.

    python benchmarks/callgrind_redis.py            # every configuration, a table on stdout
    python benchmarks/callgrind_redis.py --one NAME --requests N --redis URL   # one run

Each configuration is served N and then 3N requests in process (``app(scope, receive,
send)`` in one event loop, after a warm-up), each under callgrind; the difference of the
two totals divided by 2N is what one request costs, start-up and imports cancelled out.
Redis runs outside valgrind (its own process on a free port), so only the client side
(the Python process) is counted, as in a server's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = ("bare", "buttress-memory", "buttress-redis", "slowapi-redis")
WARMUP = 50


def build(name: str, url: str) -> Any:
    import apps

    if name == "bare":
        return apps.starlette_app()
    if name.startswith("buttress-"):
        storage = "memory://" if name == "buttress-memory" else url
        s = apps.buttress_settings(rate_limit_storage=storage)
        apps.configure_buttress_logging(s)
        stack = apps.buttress_stack(apps.starlette_app(), s)
        layer = stack
        while not hasattr(layer, "decider"):
            layer = layer.app
        # valgrind runs ~50x slower: a 50 ms budget would fail requests open uncounted.
        layer.decider.budget = 60.0
        return stack
    if name == "slowapi-redis":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.util import get_remote_address
        from starlette.middleware import Middleware

        app = apps.starlette_app()
        slow, _ = apps.slowapi_middleware()
        app.state.limiter = Limiter(
            key_func=get_remote_address,
            default_limits=[apps.NEVER_TRIPS],
            storage_uri=url,
            headers_enabled=True,
        )
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.user_middleware.insert(0, Middleware(slow))
        return app
    raise SystemExit(f"unknown configuration {name!r}")


def serve(name: str, n: int, url: str) -> None:
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
    if name != "bare":  # every request decided by the limiter, none failed open
        assert all(limited), f"{limited.count(False)} requests without rate-limit headers"


def instructions(name: str, n: int, url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--one",
                name,
                "--requests",
                str(n),
                "--redis",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode:
            raise SystemExit(f"{name} failed under valgrind:\n{done.stderr[-3000:]}")
        text = Path(out).read_text()
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    assert match, "no totals in the callgrind output"
    return int(match.group(1))


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default="")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    if args.one:
        serve(args.one, args.requests, args.redis)
        return
    proc, url, tmp = start_redis()
    try:
        n = args.requests
        per: dict[str, float] = {}
        for name in args.configs.split(","):
            low, high = instructions(name, n, url), instructions(name, 3 * n, url)
            per[name] = (high - low) / (2 * n)
            print(f"{name:18} {per[name] / 1000:9.1f}k instructions per request", flush=True)
        if "bare" in per:
            for name, value in per.items():
                if name != "bare":
                    print(f"{name:18} {(value - per['bare']) / 1000:+9.1f}k over bare")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
