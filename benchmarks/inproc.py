"""In-process worker: drives ASGI apps directly and times them in interleaved rounds.

Run by ``run.py`` once per "Sentry world" (see RESULTS.md): ``sentry_sdk.init`` is
process-global and its integrations patch Starlette classes for the whole process, so a
process either has no Sentry, buttress's Sentry, or sentry-sdk's default integrations,
and each process measures its own bare baseline.

    python benchmarks/inproc.py --world plain --out result.json [--quick]
    python benchmarks/inproc.py --world plain --profile buttress-starlette
    python benchmarks/inproc.py --world plain --serve    # driven round by round by run.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps

WORLDS = ("plain", "buttress-sentry", "peer-sentry")

HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
]


def template(path: str, client: str = "203.0.113.7") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": HEADERS,
        "client": (client, 50000),
        "server": ("127.0.0.1", 8000),
    }


OK = template(apps.ITEM_PATH)
NOT_FOUND = template("/no/such/page")
BOOM = template("/boom")

_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> dict[str, Any]:
    return _REQUEST


async def discard(message: Any) -> None:
    return None


class Config:
    """One measured configuration: an app, the request it gets, the status expected."""

    def __init__(self, name: str, app: Any, scope: dict[str, Any], expect: int, group: str) -> None:
        self.name = name
        self.app = app
        self.scope = scope
        self.expect = expect
        self.group = group
        self.samples: list[float] = []  # CPU µs per request of the process, per round
        self.wall: list[float] = []  # wall-clock µs per request, per round
        self.n = 0
        self.status: int | None = None
        self.raised: str | None = None
        self.sentry_off = False  # run with the Sentry client swapped out (see build)


def redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> str | None:
    """None when a Redis answers PING, else why not."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(16)
    except OSError as exc:
        return f"redis at {host}:{port} unreachable ({exc})"
    if not reply.startswith(b"+PONG"):
        return f"redis at {host}:{port} answered {reply!r}"
    return None


def build(world: str, *, redis: bool = True) -> tuple[list[Config], dict[str, Any]]:
    """The configurations of one world, and notes about how it was set up."""
    import logging

    notes: dict[str, Any] = {"world": world}
    s = apps.buttress_settings()
    configs: list[Config] = []

    def add(name: str, app: Any, scope: dict[str, Any] = OK, expect: int = 200) -> None:
        configs.append(Config(name, app, scope, expect, world))

    add("bare-starlette", apps.starlette_app())
    add("bare-fastapi", apps.fastapi_app())

    if world == "plain":
        apps.configure_buttress_logging(s)
        for layer in ("context", "metrics", "errors", "ratelimit"):
            add(f"layer-{layer}", apps.buttress_layer(layer, apps.starlette_app(), s))
        add("buttress-starlette", apps.buttress_stack(apps.starlette_app(), s))
        add("buttress-fastapi", apps.buttress_stack(apps.fastapi_app(), s))
        # The options peer users ask for, all on at once: what they cost over the defaults.
        fs = apps.buttress_settings(
            metrics_extra_labels={"tenant": "request:X-Tenant"},
            metrics_duration_status=True,
            metrics_request_size=True,
            access_log_fields="route,status,duration_ms,user_agent,response_bytes,query,referer",
            rate_limit_header_style="both",
            request_id_in_request=True,
            rate_limits={"GET /items/{item_id}": {"limit": apps.NEVER_TRIPS, "cost": 2}},
        )
        add("buttress-features-starlette", apps.buttress_stack(apps.starlette_app(), fs))
        why = redis_reachable() if redis else "--no-redis"
        if why is None:
            rs = apps.buttress_settings(rate_limit_storage="redis://127.0.0.1:6379")
            add("buttress-redis-starlette", apps.buttress_stack(apps.starlette_app(), rs))
        else:
            notes["redis_skipped"] = why
        for layer in (
            "asgi-correlation-id",
            "structlog-access-log",
            "starlette-exporter",
            "slowapi",
        ):
            add(f"peer-{layer}", apps.peer_layer(layer))
        add("peer-starlette", apps.starlette_app(peer=True))
        add("peer-fastapi", apps.fastapi_app(peer=True))
        # The 500 path without Sentry: what logging and answering an exception cost.
        add("bare-500", apps.starlette_app(), BOOM, 500)
        add("buttress-500", apps.buttress_stack(apps.starlette_app(), s), BOOM, 500)
        add("peer-500", apps.starlette_app(peer=True), BOOM, 500)
        notes["slowapi_middleware"] = apps.slowapi_middleware()[1]
    elif world == "buttress-sentry":
        apps.configure_buttress_logging(s)
        # Built before Sentry starts, so every choice a layer makes when it is constructed
        # (whether to open a Sentry scope per request, say) is the one it makes without
        # Sentry; their samples also run with the Sentry client switched off. Against
        # these, in the same process, is what buttress's Sentry costs a request.
        without = [
            ("buttress-starlette-sentry-off", apps.buttress_stack(apps.starlette_app(), s)),
            ("layer-errors-sentry-off", apps.buttress_layer("errors", apps.starlette_app(), s)),
        ]
        os.environ["SENTRY_DSN"] = apps.DSN  # so wrap() itself starts Sentry, as deployed
        stacks = [
            ("buttress-starlette", apps.buttress_stack(apps.starlette_app(), s)),
            ("buttress-fastapi", apps.buttress_stack(apps.fastapi_app(), s)),
            ("layer-errors", apps.buttress_layer("errors", apps.starlette_app(), s)),
        ]
        trip = apps.buttress_settings(rate_limit="1/hour")
        errors = [
            ("bare-404", apps.starlette_app(), NOT_FOUND, 404),
            ("bare-500", apps.starlette_app(), BOOM, 500),
            ("buttress-404", apps.buttress_stack(apps.starlette_app(), s), NOT_FOUND, 404),
            ("buttress-500", apps.buttress_stack(apps.starlette_app(), s), BOOM, 500),
            ("buttress-429", apps.buttress_stack(apps.starlette_app(), trip), OK, 429),
        ]
        # wrap() called init_sentry; this last call swaps in the dropping transport.
        notes["sentry"] = apps.init_buttress_sentry(s)
        for name, app in stacks:
            add(name, app)
        for name, app in without:
            add(name, app)
            configs[-1].sentry_off = True
        for name, app, scope, expect in errors:
            add(name, app, scope, expect)
    elif world == "peer-sentry":
        logging.basicConfig(stream=apps.devnull(), level=logging.INFO)
        notes["sentry"] = apps.init_peer_sentry()
        add("peer-starlette", apps.starlette_app(peer=True))
        add("peer-fastapi", apps.fastapi_app(peer=True))
        add("bare-404", apps.starlette_app(), NOT_FOUND, 404)
        add("bare-500", apps.starlette_app(), BOOM, 500)
        add("peer-404", apps.starlette_app(peer=True), NOT_FOUND, 404)
        add("peer-500", apps.starlette_app(peer=True), BOOM, 500)
        add("peer-429", apps.starlette_app(peer=True, limit="1/hour"), OK, 429)
        notes["slowapi_middleware"] = apps.slowapi_middleware()[1]
    else:
        raise SystemExit(f"unknown world {world!r}; expected one of {', '.join(WORLDS)}")
    return configs, notes


async def _one(app: Any, scope: dict[str, Any], send: Callable[[Any], Any]) -> str | None:
    try:
        await app(scope.copy(), receive, send)
    except Exception as exc:
        return type(exc).__name__
    return None


@contextlib.contextmanager
def _sentry_off(off: bool) -> Any:
    """Swap the global Sentry client for a non-recording one while the block runs."""
    if not off:
        yield
        return
    import sentry_sdk

    scope = sentry_sdk.get_global_scope()
    client = scope.client
    scope.set_client(None)
    try:
        yield
    finally:
        scope.set_client(client)


async def _slot(app: Any, scope: dict[str, Any], n: int) -> tuple[float, float]:
    """Mean µs per request over ``n`` requests, as (CPU time, wall time) of the process."""
    copy = scope.copy
    perf = time.perf_counter
    cpu = time.process_time
    c0 = cpu()
    t0 = perf()
    for _ in range(n):
        try:  # noqa: SIM105 - contextlib.suppress would cost more than the app in this loop
            await app(copy(), receive, discard)
        except Exception:  # the 500 configurations raise by design
            pass
    t1 = perf()
    c1 = cpu()
    return (c1 - c0) / n * 1e6, (t1 - t0) / n * 1e6


async def _isolated(app: Any, scope: dict[str, Any], n: int) -> tuple[float, float]:
    """``_slot`` in a task of its own with an empty context: ContextVars a configuration
    leaves behind (asgi-correlation-id never resets its own) cannot reach another one."""
    if sys.version_info < (3, 11):  # no context= before 3.11
        return await _slot(app, scope, n)
    return await asyncio.create_task(_slot(app, scope, n), context=contextvars.Context())


async def calibrate(configs: list[Config], *, slot_ms: float, warmup: int) -> None:
    """Check what each configuration answers, warm it up and size its samples."""
    for c in configs:
        statuses: list[int] = []

        async def record(message: Any, statuses: list[int] = statuses) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        with _sentry_off(c.sentry_off):
            c.raised = await _one(c.app, c.scope, record)  # the first (429: the allowed one)
            c.raised = await _one(c.app, c.scope, record) or c.raised
            _, est = await _isolated(c.app, c.scope, warmup)
        c.status = statuses[-1] if statuses else None
        c.n = max(3, int(slot_ms * 1000 / max(est, 1.0)))
    gc.collect()
    gc.freeze()  # setup objects out of the collector's way, the same for every config


async def one_round(configs: list[Config]) -> None:
    """One sample of every configuration, in order (A B C), each after a full collection."""
    for c in configs:
        gc.collect()
        with _sentry_off(c.sentry_off):
            cpu, wall = await _isolated(c.app, c.scope, c.n)
        c.samples.append(cpu)
        c.wall.append(wall)


async def measure(configs: list[Config], *, rounds: int, slot_ms: float, warmup: int) -> None:
    """Warm up and calibrate each configuration, then time them in interleaved rounds."""
    await calibrate(configs, slot_ms=slot_ms, warmup=warmup)
    for _ in range(rounds):
        await one_round(configs)


async def serve(
    configs: list[Config],
    notes: dict[str, Any],
    args: argparse.Namespace,
    slot_ms: float,
    warmup: int,
) -> None:
    """Take orders on stdin: ``round`` runs one round, ``done`` answers the summary.

    ``run.py`` drives the three worlds' workers this way, a round of each in turn, so the
    worlds are interleaved like the configurations inside one world: drift in the
    machine's speed or load hits them all alike. Replies go to the original stdout; the
    worker's own stdout is sent to stderr so nothing stray can corrupt them.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    await calibrate(configs, slot_ms=slot_ms, warmup=warmup)
    proto.write(json.dumps({"ready": [c.name for c in configs]}) + "\n")
    started = time.perf_counter()
    for line in sys.stdin:
        order = line.strip()
        if order == "round":
            await one_round(configs)
            proto.write('{"ok": true}\n')
        elif order == "done":
            result = _result(configs, notes, args.clock, time.perf_counter() - started)
            proto.write(json.dumps(result, default=repr) + "\n")
            return
        else:
            raise SystemExit(f"unknown order {order!r}")


def _stats(samples: list[float], prefix: str) -> dict[str, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    return {
        f"{prefix}median_us": statistics.median(s),
        f"{prefix}q1_us": q[0],
        f"{prefix}q3_us": q[2],
        f"{prefix}min_us": s[0],
        f"{prefix}max_us": s[-1],
    }


def summary(c: Config, clock: str) -> dict[str, Any]:
    """Statistics of both clocks; the unprefixed ones are of the primary ``clock``."""
    primary, other = (c.samples, c.wall) if clock == "cpu" else (c.wall, c.samples)
    return {
        "name": c.name,
        "world": c.group,
        "clock": clock,
        **_stats(primary, ""),
        **_stats(other, "wall_" if clock == "cpu" else "cpu_"),
        "rounds": len(c.samples),
        "requests_per_round": c.n,
        "status": c.status,
        "expected_status": c.expect,
        "raised": c.raised,
    }


def _result(
    configs: list[Config], notes: dict[str, Any], clock: str, seconds: float
) -> dict[str, Any]:
    return {
        "world": notes["world"],
        "notes": notes,
        "seconds": round(seconds, 2),
        "configs": [summary(c, clock) for c in configs],
    }


def profile(world: str, name: str, count: int, top: int) -> None:
    """cProfile one configuration of ``world`` and print the top functions by own time."""
    import cProfile
    import pstats

    configs, _ = build(world)
    (c,) = [c for c in configs if c.name == name]

    async def go() -> None:
        await _slot(c.app, c.scope, 500)
        prof = cProfile.Profile()
        prof.enable()
        await _slot(c.app, c.scope, count)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=WORLDS, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--slot-ms", type=float)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="primary statistic: CPU time of the process (robust on a shared machine) or wall",
    )
    parser.add_argument("--serve", action="store_true", help="take orders on stdin (run.py)")
    parser.add_argument("--profile", metavar="CONFIG")
    parser.add_argument("--profile-count", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.world, args.profile, args.profile_count, 40)
        return 0
    rounds = args.rounds or (3 if args.quick else 25)
    slot_ms = args.slot_ms or (1.0 if args.quick else 60.0)
    warmup = 5 if args.quick else 300

    configs, notes = build(args.world, redis=not args.no_redis)
    if args.serve:
        asyncio.run(serve(configs, notes, args, slot_ms, warmup))
        return 0
    started = time.perf_counter()
    asyncio.run(measure(configs, rounds=rounds, slot_ms=slot_ms, warmup=warmup))
    result = _result(configs, notes, args.clock, time.perf_counter() - started)
    text = json.dumps(result, indent=1, default=repr)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
