"""Memory worker: RSS of the whole stack after many distinct clients or unknown paths.

Runs in its own process (started by ``run.py``) so earlier allocations do not pollute it.

    python benchmarks/memory.py --scenario ips|ips-minute|paths [--requests 100000] [--first 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inproc

import apps

#: Per scenario: how the requests differ, and the rate limit. ``ips`` uses the stack's
#: never-tripping limit (a key lives for a second: does expiry really free memory?);
#: ``ips-minute`` a realistic limit that one request per client never trips, with a window
#: long enough that every client's counters are still alive when RSS is read (what one
#: client key costs); ``paths`` sends random unknown paths (label cardinality).
SCENARIOS = {
    "ips": ("ips", apps.NEVER_TRIPS),
    "ips-minute": ("ips", "100/minute"),
    "paths": ("paths", apps.NEVER_TRIPS),
}


def rss_mb() -> float:
    import psutil

    gc.collect()
    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


def scopes(scenario: str, count: int, start: int) -> Any:
    rng = random.Random(start)
    for i in range(start, start + count):
        if scenario == "ips":
            scope = dict(inproc.OK)
            scope["client"] = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 40000)
        else:
            path = f"/unknown/{rng.getrandbits(64):016x}"
            scope = dict(inproc.NOT_FOUND)
            scope["path"] = path
            scope["raw_path"] = path.encode()
        yield scope


async def drive(app: Any, scenario: str, count: int, start: int) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    for scope in scopes(scenario, count, start):
        await app(scope, inproc.receive, send)
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), required=True)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=1_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    kind, limit = SCENARIOS[args.scenario]
    settings = apps.buttress_settings(rate_limit=limit)
    apps.configure_buttress_logging(settings)
    app = apps.buttress_stack(apps.starlette_app(), settings)

    async def go() -> dict[str, Any]:
        before = rss_mb()
        first = await drive(app, kind, args.first, 0)
        after_first = rss_mb()
        rest = await drive(app, kind, args.requests - args.first, args.first)
        after_all = rss_mb()
        for status, n in first.items():
            rest[status] = rest.get(status, 0) + n
        return {
            "scenario": args.scenario,
            "rate_limit": limit,
            "requests": args.requests,
            "first": args.first,
            "rss_start_mb": round(before, 2),
            "rss_after_first_mb": round(after_first, 2),
            "rss_after_all_mb": round(after_all, 2),
            "growth_mb": round(after_all - after_first, 2),
            "bytes_per_request": round(
                (after_all - after_first) * 1024 * 1024 / (args.requests - args.first)
            ),
            "statuses": {str(k): v for k, v in sorted(rest.items())},
        }

    result = asyncio.run(go())
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
