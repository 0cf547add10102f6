"""What the buttress stack costs per request, against the bare app and the peer libraries.

    make bench                                   # everything, about 8 minutes
    .venv/bin/python benchmarks/run.py --quick   # tiny counts: checks that it runs
    .venv/bin/python benchmarks/run.py --no-network --write-results

Prints a table, the targets as PASS/MISS lines, and writes benchmarks/results.json
(``--write-results`` also writes benchmarks/RESULTS.md). The parts:

- in process: ``inproc.py`` drives each ASGI app directly with a prebuilt scope, one
  event loop, configurations interleaved round by round; one subprocess per "Sentry
  world", each with its own bare baseline (see RESULTS.md for why);
- instructions: ``callgrind.py``, every configuration under valgrind's callgrind (N and
  3N requests), in process and uvicorn itself; skipped, saying why, without valgrind;
- memory: ``memory.py`` in a fresh process per scenario;
- network: uvicorn (1 worker) per configuration on a free 127.0.0.1 port, loaded by wrk
  in alternating rounds; skipped, saying why, when wrk is missing.

This is a measurement, not a test: nothing here asserts; the smoke test only runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORLDS = ("plain", "buttress-sentry", "peer-sentry")
PACKAGES = (
    "buttress",
    "starlette",
    "fastapi",
    "structlog",
    "prometheus-client",
    "sentry-sdk",
    "limits",
    "orjson",
    "uvicorn",
    "uvloop",
    "httptools",
    "redis",
    "asgi-correlation-id",
    "starlette-exporter",
    "prometheus-fastapi-instrumentator",
    "slowapi",
)

# Targets of issue 7.
STACK_MAX_US = 40.0
PEER_FRACTION = 0.10
SENTRY_MAX_US = 10.0
MEMORY_MAX_MB = 5.0
# Targets of issue 16.
NETWORK_MIN_RATIO = 0.75  # the goal is 0.80
STACK_MAX_INSTRUCTIONS = 90_000  # whole stack with Sentry over bare, in process
REDIS_MAX_INSTRUCTIONS = 350_000  # the same with redis:// storage
MULTIPROCESS_MAX_INSTRUCTIONS = 50_000  # multiprocess metrics over single-process ones
WORKERS_MIN_RATIO = 0.85  # 2 workers: server CPU per request, metrics off / multiprocess on
MEMORY_MAX_BYTES_PER_KEY = 150  # memory://, every key alive

NETWORK_KINDS = (
    "bare",
    "buttress",
    "peer",
    "bare-fastapi",
    "buttress-fastapi",
    "workers-metrics",
    "workers-no-metrics",
)


# --- environment --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


# --- in process -----------------------------------------------------------------------------


def run_workers(jobs: dict[str, list[str]], *, parallel: bool, timeout: float) -> dict[str, Any]:
    """Run worker scripts (each writes JSON to ``--out``); one at a time unless ``parallel``.

    Measurements run one at a time; ``--quick`` runs them side by side, since its numbers
    mean nothing and the smoke test must stay short.
    """
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        running: list[tuple[str, Path, subprocess.Popen[str]]] = []

        def finish(key: str, out: Path, proc: subprocess.Popen[str]) -> None:
            try:
                _, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise RuntimeError(f"{key} did not finish within {timeout:g}s") from None
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"{key} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
            result: dict[str, Any] = json.loads(out.read_text())
            if stderr.strip():
                result["stderr"] = stderr[-2000:]
            results[key] = result

        try:
            for key, args in jobs.items():
                out = Path(tmp) / f"{key}.json"
                print(f"  {key} ...", flush=True)
                proc = subprocess.Popen(
                    [sys.executable, *args, "--out", str(out)],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                running.append((key, out, proc))
                if not parallel:
                    finish(*running.pop())
            while running:
                finish(*running.pop(0))
        finally:
            for _, _, proc in running:
                proc.kill()
                proc.wait()
    return results


def in_process(quick: bool, rounds: int | None, clock: str) -> dict[str, Any]:
    """Drive one ``inproc.py --serve`` worker per Sentry world, a round of each in turn.

    The workers start (import, build, warm up) side by side; then only one of them works at
    a time, so the worlds interleave round by round like configurations within a world.
    """
    n_rounds = rounds or (3 if quick else 25)
    workers: dict[str, tuple[subprocess.Popen[str], Any]] = {}
    with contextlib.ExitStack() as stack:
        try:
            return _drive(workers, stack, quick, n_rounds, clock)
        finally:
            for proc, _ in workers.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _drive(
    workers: dict[str, tuple[subprocess.Popen[str], Any]],
    stack: contextlib.ExitStack,
    quick: bool,
    n_rounds: int,
    clock: str,
) -> dict[str, Any]:
    for world in WORLDS:
        args = [str(HERE / "inproc.py"), "--world", world, "--clock", clock, "--serve"]
        if quick:
            args.append("--quick")
        log = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115 - the stack closes it
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        workers[world] = (proc, log)

    def ask(world: str, order: str | None) -> dict[str, Any]:
        proc, log = workers[world]
        assert proc.stdin is not None
        assert proc.stdout is not None
        if order is not None:
            proc.stdin.write(order + "\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            log.seek(0)
            raise RuntimeError(
                f"in-process worker {world!r} exited with {proc.returncode}:\n" + log.read()[-4000:]
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    for world in WORLDS:
        print(
            f"  in process: {world}: {len(ask(world, None)['ready'])} configurations ready",
            flush=True,
        )
    print(f"  in process: {n_rounds} rounds, worlds interleaved ...", flush=True)
    for _ in range(n_rounds):
        for world in WORLDS:
            ask(world, "round")
    results = {world: ask(world, "done") for world in WORLDS}
    for world, (proc, log) in workers.items():
        proc.wait(timeout=30)
        log.seek(0)
        stderr = log.read().strip()
        if stderr:
            results[world]["stderr"] = stderr[-2000:]
    return results


def memory_jobs(quick: bool) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    # --quick leaves out ips-minute: the same code path as ips, one process fewer.
    for scenario in ("ips", "paths") if quick else ("ips", "ips-minute", "paths"):
        args = [str(HERE / "memory.py"), "--scenario", scenario]
        if quick:
            args += ["--requests", "1000", "--first", "100"]
        jobs[f"memory: {scenario}"] = args
    return jobs


# --- network ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {timeout}s")


@contextlib.contextmanager
def servers(kinds: tuple[str, ...], loop: str) -> Iterator[dict[str, tuple[int, Any]]]:
    procs: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for kind in kinds:
            port = free_port()
            env = {**os.environ, "BENCH_APP": kind}
            if kind.startswith("workers-"):
                # buttress run wraps the bare app itself (settings from the environment) and
                # makes the multiprocess directory that 2 workers need.
                env["BENCH_APP"] = "bare"
                env["BUTTRESS_METRICS"] = "false" if kind == "workers-no-metrics" else "true"
                env["BUTTRESS_LOG_FORMAT"] = "json"
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
                cmd = [
                    str(Path(sys.executable).with_name("buttress")), "run", "server_app:app",
                    "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "2", "--log-level", "warning",
                    "--", "--http", "httptools", "--loop", loop,
                ]  # fmt: skip
            else:
                cmd = [
                    sys.executable, "-m", "uvicorn", "server_app:app",
                    "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                    "--no-access-log", "--http", "httptools", "--loop", loop,
                    "--log-level", "warning",
                ]  # fmt: skip
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs[kind] = (port, proc)
        for port, proc in procs.values():
            _wait_port(port, proc)
        yield {kind: (port, proc) for kind, (port, proc) in procs.items()}
    finally:
        for _, proc in procs.values():
            proc.terminate()
        for _, proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(match.group(1)) if match else float("nan")
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:.*", out)
    result["socket_errors"] = m.group(0) if m else ""
    return result


def network(quick: bool, seconds: float | None, rounds: int | None) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (apt-get install wrk); network part skipped"}
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    import psutil

    duration = seconds or (1.0 if quick else 5.0)
    n_rounds = rounds or (1 if quick else 3)
    kinds = NETWORK_KINDS
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with servers(kinds, loop) as running:
        url = {k: f"http://127.0.0.1:{port}/items/42" for k, (port, _) in running.items()}
        for kind in kinds:  # warm-up
            subprocess.run([wrk, "-t1", "-c8", "-d1s", url[kind]], capture_output=True, timeout=30)
        for _ in range(n_rounds):
            for kind in kinds:
                server = psutil.Process(running[kind][1].pid)
                tree = [server, *server.children(recursive=True)]  # buttress run's workers
                cpu0 = [p.cpu_times() for p in tree]
                cmd = [wrk, "-t1", "-c32", f"-d{duration:g}s", "--latency", url[kind]]
                print(f"  network: {kind} ({duration:g}s) ...", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
                cpu1 = [p.cpu_times() for p in tree]
                sample = parse_wrk(proc.stdout)
                cpu = sum((b.user - a.user) + (b.system - a.system) for a, b in zip(cpu0, cpu1))
                sample["server_cpu_us_per_request"] = (
                    cpu / sample["requests"] * 1e6 if sample["requests"] else float("nan")
                )
                samples[kind].append(sample)
    out: dict[str, Any] = {
        "loop": loop,
        "http": "httptools",
        "wrk": f"-t1 -c32 -d{duration:g}s --latency",
        "rounds": n_rounds,
        "configs": {},
    }
    for kind, rows in samples.items():
        out["configs"][kind] = {
            key: statistics.median(r[key] for r in rows)
            for key in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "server_cpu_us_per_request")
        }
        out["configs"][kind]["rps_all"] = [r["rps"] for r in rows]
        out["configs"][kind]["non_2xx"] = sum(r["non_2xx"] for r in rows)
        out["configs"][kind]["socket_errors"] = [
            r["socket_errors"] for r in rows if r["socket_errors"]
        ]
    return out


# --- analysis -----------------------------------------------------------------------------------


def _by_name(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in world["configs"]}


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Overheads (difference and ratio) against each world's own bare app, and the targets."""
    worlds = results["in_process"]
    plain = _by_name(worlds["plain"])
    bsent = _by_name(worlds["buttress-sentry"])
    psent = _by_name(worlds["peer-sentry"])
    rows: list[dict[str, Any]] = []

    def bare_of(name: str) -> str:
        return "bare-fastapi" if name.endswith("fastapi") else "bare-starlette"

    for world_name, world in (("plain", plain), ("buttress-sentry", bsent), ("peer-sentry", psent)):
        for name, c in world.items():
            row = dict(c)
            base_name = {"404": "bare-404", "500": "bare-500"}.get(name.rsplit("-", 1)[-1])
            base_name = base_name if base_name in world else bare_of(name)
            if base_name != name and base_name in world:
                base = world[base_name]["median_us"]
                row["baseline"] = base_name
                row["overhead_us"] = c["median_us"] - base
                row["ratio"] = c["median_us"] / base
            row["world"] = world_name
            rows.append(row)

    def med(world: dict[str, Any], name: str) -> float:
        return float(world[name]["median_us"]) if name in world else float("nan")

    derived: dict[str, Any] = {}
    for fw in ("starlette", "fastapi"):
        bare_a = med(plain, f"bare-{fw}")
        tax_b = med(bsent, f"bare-{fw}") - bare_a  # what Sentry's init costs a bare app
        tax_c = med(psent, f"bare-{fw}") - bare_a
        stack_a = med(plain, f"buttress-{fw}") - bare_a
        stack_b = med(bsent, f"buttress-{fw}") - med(bsent, f"bare-{fw}")
        peer_c = med(psent, f"peer-{fw}") - med(psent, f"bare-{fw}")
        derived[fw] = {
            "bare_us": bare_a,
            "buttress_no_sentry_overhead_us": stack_a,
            "buttress_overhead_us": stack_b + tax_b,
            "buttress_sentry_tax_on_bare_us": tax_b,
            "sentry_us": (stack_b - stack_a) + tax_b,  # replaced below when measured in-process
            "peer_no_sentry_overhead_us": med(plain, f"peer-{fw}") - bare_a,
            "peer_overhead_us": peer_c + tax_c,
            "peer_sentry_tax_on_bare_us": tax_c,
        }
        if fw == "starlette" and "buttress-starlette-sentry-off" in bsent:
            # Within the buttress-sentry process: the stack with Sentry against the same
            # stack built before Sentry started and run with the client off, plus what
            # init_sentry costs a bare app (against the plain world's bare app).
            off = med(bsent, "buttress-starlette-sentry-off")
            derived[fw]["sentry_us"] = (med(bsent, "buttress-starlette") - off) + tax_b
        if fw == "starlette" and "layer-errors-sentry-off" in bsent:
            # Sentry alone: the error layer (which reports to Sentry) the same way.
            off = med(bsent, "layer-errors-sentry-off")
            derived[fw]["sentry_alone_us"] = (med(bsent, "layer-errors") - off) + tax_b
        d = derived[fw]
        d["buttress_fraction_of_peer"] = d["buttress_overhead_us"] / d["peer_overhead_us"]

    targets: list[dict[str, Any]] = []

    def target(name: str, value: float, limit: float, unit: str, ok: bool, note: str) -> None:
        targets.append(
            {"target": name, "value": value, "limit": limit, "unit": unit, "pass": ok, "note": note}
        )

    s = derived["starlette"]
    v = s["buttress_overhead_us"]
    target("whole stack over bare (Starlette)", v, STACK_MAX_US, "µs", v <= STACK_MAX_US,
           f"{v - STACK_MAX_US:+.1f} µs vs the limit")  # fmt: skip
    f = s["buttress_fraction_of_peer"]
    target("whole stack vs peer stack overhead", f, PEER_FRACTION, "x", f <= PEER_FRACTION,
           f"{v:.1f} µs vs {s['peer_overhead_us']:.1f} µs; 1/{1 / f:.1f}" if f > 0 else "")  # fmt: skip
    sv = s["sentry_us"]
    target("Sentry in the whole stack, no error", sv, SENTRY_MAX_US, "µs", sv <= SENTRY_MAX_US,
           f"stack with Sentry vs built without it, one process, "
           f"{sv - s['buttress_sentry_tax_on_bare_us']:+.1f} + process-wide (bare app) "
           f"{s['buttress_sentry_tax_on_bare_us']:+.1f} µs")  # fmt: skip
    sa = s.get("sentry_alone_us", float("nan"))
    target("Sentry alone (error layer with Sentry live), no error", sa, SENTRY_MAX_US, "µs",
           sa <= SENTRY_MAX_US, "the error layer with Sentry vs built without it, one "
           f"process, {sa - s['buttress_sentry_tax_on_bare_us']:+.1f} + process-wide (bare app) "
           f"{s['buttress_sentry_tax_on_bare_us']:+.1f} µs")  # fmt: skip
    if "buttress-429" in bsent:
        c429 = med(bsent, "buttress-429")
        allowed = med(bsent, "buttress-starlette")
        target("a 429 cheaper than an allowed request", c429 / allowed, 1.0, "x",
               c429 < allowed, f"{c429:.1f} µs vs {allowed:.1f} µs")  # fmt: skip
    cg = results.get("callgrind", {})
    net = results.get("network", {})
    if "configs" in net:
        configs = net["configs"]
        for label, full, bare in (
            ("Starlette", "buttress", "bare"),
            ("FastAPI", "buttress-fastapi", "bare-fastapi"),
        ):
            if full not in configs or bare not in configs:
                continue
            bare_rps, full_rps = configs[bare]["rps"], configs[full]["rps"]
            r = full_rps / bare_rps if bare_rps else float("nan")
            counted = (
                f"; uvicorn's instructions per request {cg['server-buttress'] / 1000:.0f}k vs "
                f"{cg['server-bare'] / 1000:.0f}k (callgrind)"
                if label == "Starlette" and "server-buttress" in cg and "server-bare" in cg
                else ""
            )
            target(f"under uvicorn, share of bare req/s ({label})", r, NETWORK_MIN_RATIO, "x",
                   r >= NETWORK_MIN_RATIO, f"{full_rps:.0f} vs {bare_rps:.0f} req/s; server CPU "
                   f"{configs[full]['server_cpu_us_per_request']:.1f} vs "
                   f"{configs[bare]['server_cpu_us_per_request']:.1f} µs per request{counted}; "
                   "goal 0.80")  # fmt: skip
        if "workers-metrics" in configs and "workers-no-metrics" in configs:
            # Server CPU per request, not req/s: two workers and wrk share two cores, so
            # the req/s of either mostly says who got the cores.
            on = configs["workers-metrics"]["server_cpu_us_per_request"]
            off = configs["workers-no-metrics"]["server_cpu_us_per_request"]
            r = off / on if on else float("nan")
            target("2 workers, share of server CPU left with multiprocess metrics on", r,
                   WORKERS_MIN_RATIO, "x", r >= WORKERS_MIN_RATIO,
                   f"buttress run --workers 2: {on:.1f} µs per request with metrics, {off:.1f} "
                   f"without; req/s {configs['workers-metrics']['rps']:.0f} vs "
                   f"{configs['workers-no-metrics']['rps']:.0f}")  # fmt: skip
    if "bare" in cg and "buttress-sentry" in cg:
        v = cg["buttress-sentry"] - cg["bare"]
        target("whole stack with Sentry over bare, instructions per request", v,
               STACK_MAX_INSTRUCTIONS, "instructions", v <= STACK_MAX_INSTRUCTIONS,
               f"callgrind: {cg['buttress-sentry'] / 1000:.1f}k vs bare {cg['bare'] / 1000:.1f}k; "
               f"{(v - STACK_MAX_INSTRUCTIONS) / 1000:+.1f}k vs the limit")  # fmt: skip
    if "bare" in cg and "buttress-redis" in cg:
        v = cg["buttress-redis"] - cg["bare"]
        peer = cg.get("slowapi-redis", float("nan")) - cg["bare"]
        target("redis:// storage, whole stack over bare, instructions per request", v,
               REDIS_MAX_INSTRUCTIONS, "instructions", v <= REDIS_MAX_INSTRUCTIONS,
               f"callgrind; slowapi with the same Redis alone: {peer / 1000:+.1f}k")  # fmt: skip
    if "buttress" in cg and "buttress-multiprocess" in cg:
        v = cg["buttress-multiprocess"] - cg["buttress"]
        target("multiprocess metrics over single-process, instructions per request", v,
               MULTIPROCESS_MAX_INSTRUCTIONS, "instructions", v <= MULTIPROCESS_MAX_INSTRUCTIONS,
               "callgrind: prometheus-client's mmap writes, per request")  # fmt: skip
    for scenario, label in (
        ("ips", "distinct client IPs"),
        ("ips-minute", "distinct client IPs, limit 100/minute (all keys alive)"),
        ("paths", "random unknown paths"),
    ):
        m = results.get("memory", {}).get(scenario)
        if m:
            g = m["growth_mb"]
            target(f"memory after {m['requests']:,} {label} vs {m['first']:,}", g,
                   MEMORY_MAX_MB, "MB", g <= MEMORY_MAX_MB,
                   f"{m['rss_after_first_mb']:.1f} -> {m['rss_after_all_mb']:.1f} MB, "
                   f"{m.get('bytes_per_request', 0)} bytes per request")  # fmt: skip
            if scenario == "ips-minute":
                b = float(m.get("bytes_per_request", float("nan")))
                target("memory per live rate-limit key (memory://)", b,
                       MEMORY_MAX_BYTES_PER_KEY, "bytes", b <= MEMORY_MAX_BYTES_PER_KEY,
                       f"RSS growth over {m['requests'] - m['first']:,} keys alive at once")  # fmt: skip
    return {"rows": rows, "derived": derived, "targets": targets}


# --- output --------------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    if isinstance(x, (int, float)) and x == x:
        return fmt.format(x)
    return "-"


def render(results: dict[str, Any]) -> str:
    """The whole report as Markdown (also what stdout shows)."""
    a = results["analysis"]
    m = results["machine"]
    lines: list[str] = []
    w = lines.append
    w(f"Machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; {m['date']}; "
      f"load average at start {m['load_average_start']}, at end {m.get('load_average_end')} "
      "(other work on the machine inflates absolute numbers; compare ratios).")  # fmt: skip
    w("")
    w("### In process (µs per request; median of interleaved rounds, IQR, min-max)")
    w("")
    w("| world | configuration | median | IQR | min-max | overhead vs bare | ratio | status |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in a["rows"]:
        status = str(r["status"]) + (
            "" if r["status"] == r["expected_status"] else f" (expected {r['expected_status']})"
        )
        w(
            f"| {r['world']} | {r['name']} | {_f(r['median_us'])} | {_f(r['q1_us'])}-{_f(r['q3_us'])} "
            f"| {_f(r['min_us'])}-{_f(r['max_us'])} | {_f(r.get('overhead_us'), '{:+.1f}')} "
            f"| {_f(r.get('ratio'), '{:.2f}x')} | {status} |"
        )
    w("")
    w("### Overhead over the bare app, Sentry included (µs per request)")
    w("")
    w(
        "| framework | bare | buttress (no Sentry) | buttress | of which Sentry | peer (no Sentry) | peer | buttress / peer |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for fw, d in a["derived"].items():
        w(
            f"| {fw} | {_f(d['bare_us'])} | {_f(d['buttress_no_sentry_overhead_us'], '{:+.1f}')} "
            f"| {_f(d['buttress_overhead_us'], '{:+.1f}')} | {_f(d['sentry_us'], '{:+.1f}')} "
            f"| {_f(d['peer_no_sentry_overhead_us'], '{:+.1f}')} | {_f(d['peer_overhead_us'], '{:+.1f}')} "
            f"| {_f(d['buttress_fraction_of_peer'], '{:.3f}')} |"
        )
    w("")
    w(
        "Each overhead is against the bare app of its own process, plus the bare-app difference "
        'that a Sentry initialisation causes. "Of which Sentry" for Starlette compares the '
        "same stack with Sentry and built before Sentry started (client off), in one process; for FastAPI it is "
        "the difference between two processes and carries their noise."
    )
    w("")
    w("### Instructions per request (callgrind, in process; a loaded machine does not move them)")
    w("")
    cg = results.get("callgrind", {})
    if cg and "bare" in cg:
        w("Each configuration in a process of its own, N and 3N requests under valgrind's "
          "callgrind; (3N total - N total) / 2N. `server-*`: uvicorn itself under callgrind "
          "(1 worker, httptools, uvloop), N and 3N keep-alive requests.")  # fmt: skip
        w("")
        w("| configuration | instructions per request | over bare | over the stack |")
        w("|---|---:|---:|---:|")
        for name, value in cg.items():
            base = cg.get("server-bare" if name.startswith("server-") else "bare")
            if name.endswith("fastapi") or name.endswith("fastapi-sentry"):
                base = cg.get("bare-fastapi", base)
            stack = cg.get("buttress") if name.startswith(("feature", "buttress-multi")) else None
            is_base = name in ("bare", "bare-fastapi", "server-bare")
            over = _f((value - base) / 1000, "{:+.1f}k") if base and not is_base else "-"
            over_stack = _f((value - stack) / 1000, "{:+.1f}k") if stack else "-"
            w(f"| {name} | {value / 1000:.1f}k | {over} | {over_stack} |")
        w("")
        w("`feature-*`: the stack with one peer-feature option on (`features-all`: all of "
          "them); their cost is the column \"over the stack\" (see `callgrind.FEATURES`).")  # fmt: skip
    else:
        w(f"Skipped: {results.get('callgrind_skipped', 'not run')}.")
    w("")
    b_world = {c["name"]: c for c in results["in_process"]["buttress-sentry"]["configs"]}
    p_world = {c["name"]: c for c in results["in_process"]["peer-sentry"]["configs"]}
    w("### Error paths (µs per request, each in its Sentry world)")
    w("")
    w("| path | bare app | buttress | peer stack | buttress / peer |")
    w("|---|---:|---:|---:|---:|")
    for label, key, bare_key in (
        ("429 (limit tripped)", "429", None),
        ("404 (unknown path, normalized)", "404", "bare-404"),
        ("500 (handler raises, reported to Sentry)", "500", "bare-500"),
    ):
        b = b_world.get(f"buttress-{key}", {}).get("median_us", float("nan"))
        p = p_world.get(f"peer-{key}", {}).get("median_us", float("nan"))
        bare = (
            b_world.get(bare_key, {}).get("median_us", float("nan")) if bare_key else float("nan")
        )
        w(
            f"| {label} | {_f(bare)} | {_f(b)} | {_f(p)} | {_f(b / p if p else float('nan'), '{:.2f}')} |"
        )
    allowed = b_world.get("buttress-starlette", {}).get("median_us", float("nan"))
    w("")
    w(
        f"An allowed request through the whole buttress stack costs {_f(allowed)} µs in the same world."
    )
    w("")
    net = results.get("network", {})
    w("### Under uvicorn + wrk")
    w("")
    if "configs" in net:
        w(f"uvicorn 1 worker, `--loop {net['loop']} --http {net['http']} --no-access-log`; "
          f"`wrk {net['wrk']}`, {net['rounds']} alternating rounds, medians. `workers-*`: "
          "`buttress run --workers 2` wrapping the bare app from the environment (JSON access "
          "log, metrics with the multiprocess directory it makes, or `BUTTRESS_METRICS=false`); "
          "server CPU summed over the workers.")  # fmt: skip
        w("")
        w(
            "| configuration | req/s | of bare | p50 ms | p90 ms | p99 ms | server CPU µs/request | non-2xx |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        bare = net["configs"]["bare"]["rps"]
        for kind, c in net["configs"].items():
            w(
                f"| {kind} | {_f(c['rps'], '{:.0f}')} | {_f(c['rps'] / bare * 100, '{:.1f}%')} "
                f"| {_f(c['p50_ms'], '{:.2f}')} | {_f(c['p90_ms'], '{:.2f}')} | {_f(c['p99_ms'], '{:.2f}')} "
                f"| {_f(c['server_cpu_us_per_request'])} | {c['non_2xx']} |"
            )
    else:
        w(f"Skipped: {net.get('skipped', 'not run')}.")
    w("")
    w("### Memory (RSS, whole stack, memory storage)")
    w("")
    mem = results.get("memory", {})
    if mem:
        w("| scenario | rate limit | RSS after first | RSS after all | growth | statuses |")
        w("|---|---|---:|---:|---:|---|")
        for scenario, r in mem.items():
            w(
                f"| {r['requests']:,} requests, {scenario} | {r['rate_limit']} | {r['rss_after_first_mb']:.1f} MB "
                f"after {r['first']:,} | {r['rss_after_all_mb']:.1f} MB | {r['growth_mb']:+.2f} MB | {r['statuses']} |"
            )
    else:
        w("Skipped.")
    w("")
    w("### Targets")
    w("")
    for t in a["targets"]:
        mark = "PASS" if t["pass"] else "MISS"
        op = ">=" if "share" in t["target"] else "<" if "429" in t["target"] else "<="
        if t["unit"] == "instructions":
            value, limit = _f(t["value"] / 1000, "{:.1f}k"), f"{t['limit'] / 1000:g}k"
        else:
            value, limit = _f(t["value"], "{:.3f}"), f"{t['limit']:g}"
        w(f"- {mark} {t['target']}: {value} {t['unit']} ({op} {limit}); {t['note']}")
    notes = []
    for world, data in results["in_process"].items():
        for key, value in data.get("notes", {}).items():
            if key != "world":
                notes.append(f"- {world}: {key} = {value}")
    if notes:
        w("")
        w("### Notes from the run")
        w("")
        lines.extend(notes)
    return "\n".join(lines)


RESULTS_HEAD = """# Benchmark results

Written by `.venv/bin/python benchmarks/run.py --write-results` (`make bench` runs the
same benchmark without rewriting this file; `run.py --from-json benchmarks/results.json
--write-results` turns its results into this page). Absolute numbers move from machine to machine
and with the load of the machine; the ratios from one run are what to compare.

## How it measures

- **In process** (`inproc.py`): each ASGI app is driven directly: a template scope copied
  per request (the layers write into it), a `receive` returning one `http.request`, a
  `send` that discards. After a warm-up, each configuration gets a number of requests per
  sample sized to about 60 ms of work; `gc.collect()` runs before every sample and the
  setup objects are `gc.freeze()`d, so no configuration pays for another's garbage. All
  configurations of a process run in one event loop, interleaved round by round
  (A B C A B C), 25 rounds; the table shows the median, the interquartile range and the
  min-max of the per-round means.
- **CPU time, not wall time**: the statistic is the CPU time of the process per request
  (`time.process_time`), which a busy or shared machine disturbs far less than wall time
  (a descheduled process accrues no CPU time); the wall-clock statistics are in
  results.json. For the Redis configuration, CPU time leaves out the wait for Redis.
- **Sentry worlds**: `sentry_sdk.init` is process-global and sentry-sdk's default
  integrations patch Starlette and FastAPI classes for the whole process, so one process
  cannot hold an uncontaminated bare app, the buttress stack and the peer stack at once.
  There are three worker processes: `plain` (no Sentry: bare apps, each layer alone, the
  stack without Sentry, the peer layers and the peer stack without Sentry),
  `buttress-sentry` (after buttress's `init_sentry` with a DSN and a transport that drops
  envelopes: bare apps, the whole stack, the error paths) and `peer-sentry` (after
  `sentry_sdk.init` with its default integrations, tracing off, the same dropping
  transport: bare apps, the peer stack, its error paths). `run.py` drives the three
  workers a round of each in turn, so the worlds are interleaved like the configurations
  inside a world. Overheads are taken against the bare app of the same process; what a
  Sentry initialisation costs the bare app itself (patched classes) is added back as the
  difference between that world's bare app and the plain world's, so both the "buttress"
  and the "peer" overheads include everything their Sentry costs. Comparisons across
  processes carry more noise than those within one (several µs on a 150 µs stack, more on
  a loaded machine), so Sentry's own cost is measured within the `buttress-sentry` process:
  the stack (and the error layer alone) with Sentry, against the same built before Sentry
  started (so construction-time choices match a process without Sentry) and run with the
  Sentry client switched off (`*-sentry-off`), plus the bare-app difference for patched
  classes.
- **Peer stack**: asgi-correlation-id, a hand-written pure-ASGI structlog JSON access-log
  middleware (`apps.StructlogAccessLogMiddleware`, the kind teams write), starlette-exporter
  (Starlette) or prometheus-fastapi-instrumentator (FastAPI), slowapi (its pure ASGI
  middleware, see the notes) and sentry-sdk's default integrations: all installed from the
  `bench` extra and imported, never copied.
- **Error paths**: a 429 (limit `1/hour`, the same client), a 404 for an unknown path and a
  500 from a handler that raises, each in its Sentry world, against the bare app's 404/500.
  A 500 includes building and serializing the Sentry event (the transport drops it).
- **Memory** (`memory.py`): a fresh process per scenario; RSS (after `gc.collect()`) after
  100,000 requests against RSS after the first 1,000: 100,000 client IPs with the stack's
  limit (`1000000/second`: does expiry free the keys?), the same with `100/minute` (every
  key still alive at the end: what one client key costs) and 100,000 random unknown paths.
- **Network**: uvicorn, 1 worker, `--no-access-log --http httptools` (uvloop when
  installed) on free 127.0.0.1 ports, one server per configuration (Starlette and FastAPI,
  bare and wrapped, and the peer stack), loaded by `wrk` in alternating rounds; req/s,
  latency percentiles and the server's CPU time per request. Two more servers are
  `buttress run --workers 2`, with metrics (prometheus-client's multiprocess mode, which
  writes every observation to a memory-mapped file) and with `BUTTRESS_METRICS=false`:
  what many workers pay for correct metrics.
- **Instructions** (`callgrind.py`): every configuration in a process of its own under
  valgrind's callgrind, served N and then 3N requests; (total at 3N - total at N) / 2N is
  one request, start-up cancelled out. A count of instructions does not move with the
  load of the machine, so a change's cost shows even on a busy one. Besides the in-process
  configurations (each layer, the stack with and without Sentry, FastAPI, the stack with
  each peer-feature option on, multiprocess metrics, Redis storage, the peer stack and
  slowapi on the same Redis), `server-bare` and `server-buttress` run uvicorn itself under
  callgrind and count the whole server process per request.

## Latest run

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts: only checks that it runs"
    )
    parser.add_argument("--no-network", action="store_true", help="skip the uvicorn + wrk part")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    parser.add_argument(
        "--no-callgrind", action="store_true", help="skip the instruction counts (valgrind)"
    )
    parser.add_argument(
        "--write-results", action="store_true", help="rewrite benchmarks/RESULTS.md"
    )
    parser.add_argument(
        "--json", type=Path, default=HERE / "results.json", help="where to write the JSON"
    )
    parser.add_argument("--rounds", type=int, help="in-process rounds per configuration")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="in-process statistic: CPU time of the process (default) or wall-clock time",
    )
    parser.add_argument("--network-seconds", type=float, help="wrk duration per round")
    parser.add_argument("--network-rounds", type=int, help="alternating wrk rounds")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="measure nothing: report (and with --write-results, write RESULTS.md) from a "
        "results.json of an earlier run, e.g. the one `make bench` wrote",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["analysis"] = analyse(results)
        return _report(results, args, write_json=False)

    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    print(
        "buttress benchmark" + (" (quick: the numbers mean nothing)" if args.quick else ""),
        flush=True,
    )
    results["in_process"] = in_process(args.quick, args.rounds, args.clock)
    if args.no_callgrind:
        results["callgrind_skipped"] = "--no-callgrind given"
    elif shutil.which("valgrind") is None:
        results["callgrind_skipped"] = "valgrind is not installed (apt-get install valgrind)"
    else:
        import callgrind

        names = ["bare", "buttress-sentry"] if args.quick else list(callgrind.CONFIGS)
        results["callgrind"] = callgrind.measure(names, 10 if args.quick else 200)
    done = (
        {}
        if args.no_memory
        else run_workers(memory_jobs(args.quick), parallel=args.quick, timeout=900)
    )
    results["memory"] = {key.split(": ", 1)[1]: value for key, value in done.items()}
    if args.no_network:
        results["network"] = {"skipped": "--no-network given; network part skipped"}
    else:
        results["network"] = network(args.quick, args.network_seconds, args.network_rounds)
    if "skipped" in results["network"]:
        print(f"  network: {results['network']['skipped']}", flush=True)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.monotonic() - started, 1)
    results["analysis"] = analyse(results)
    return _report(results, args, write_json=True)


def _report(results: dict[str, Any], args: argparse.Namespace, *, write_json: bool) -> int:
    report = render(results)
    print()
    print(report)
    print(f"\n(total {results['seconds']} s)")
    if write_json:
        args.json.write_text(json.dumps(results, indent=1, default=repr))
    if args.write_results:
        versions = ", ".join(f"{k} {v}" for k, v in results["machine"]["versions"].items())
        text = RESULTS_HEAD + report + f"\n\nLibrary versions: {versions}.\n"
        (HERE / "RESULTS.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
