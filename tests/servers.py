"""Start and stop real ASGI servers (uvicorn, hypercorn, granian) as subprocesses in tests.

``start(server, "module:attr", workers=2)`` runs ``python -m <server>`` bound to
127.0.0.1 on a free port, with its output going to a temporary file (a pipe that nobody
reads would block a chatty server), and returns once the port accepts connections.
``stop(proc)`` ends the server's whole process group, so its workers go too, and returns
everything it printed.

Each server runs in a session (and process group) of its own: ``stop`` SIGTERMs the
supervisor, then signals whatever is left of the group, so a worker that outlives its
supervisor is not left behind, and a test run under pytest-xdist never signals another
worker's servers. Ports come from the
kernel (bind to port 0); if a parallel test takes the port first, the server exits with
"address in use" and ``start`` tries again on a new port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent

SERVERS = ("uvicorn", "hypercorn", "granian")

_ADDRESS_IN_USE = ("address already in use", "address in use", "errno 98", "os error 98")


def command(
    server: str, target: str, port: int, *, workers: int = 1, root_path: str = ""
) -> list[str]:
    """The ``python -m <server> ...`` command line: one worker count, one root path, no access log."""
    if server == "uvicorn":
        # --workers 1 serves in the process itself; more spawn a supervisor with children.
        args = ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(workers), "--no-access-log"]
        if root_path:
            args += ["--root-path", root_path]
    elif server == "hypercorn":
        # hypercorn always spawns --workers children (default 1) under a supervisor;
        # its access log is off unless --access-logfile is given.
        args = ["-m", "hypercorn", target, "--bind", f"127.0.0.1:{port}"]
        args += ["--workers", str(workers)]
        if root_path:
            args += ["--root-path", root_path]
    elif server == "granian":
        # granian's default interface is RSGI: ASGI must be asked for. Its access log is
        # off by default; --no-access-log makes that explicit.
        args = ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
        args += ["--port", str(port), "--workers", str(workers), "--no-access-log"]
        if root_path:
            args += ["--url-path-prefix", root_path]
        args.append(target)
    else:
        raise ValueError(f"unknown server {server!r}; one of {SERVERS}")
    return [sys.executable, *args]


def start(
    server: str,
    target: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    root_path: str = "",
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``server`` serving ``target`` on 127.0.0.1; return the process and its port.

    ``env`` is added to this process's environment; a ``PYTHONPATH`` in it is put before the
    repository root, which is always on the path so ``tests.something:app`` imports, and
    this process's own ``PYTHONPATH`` comes after.
    """
    extra = dict(env or {})
    inherited = os.environ.get("PYTHONPATH", "")
    paths = (extra.pop("PYTHONPATH", ""), str(ROOT), inherited)
    pythonpath = os.pathsep.join(p for p in paths if p)
    full_env = {**os.environ, **extra, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    last_error: BaseException | None = None
    for _attempt in range(5):
        port = free_port()
        log = tempfile.TemporaryFile("w+b")  # closed by stop()
        proc = subprocess.Popen(
            command(server, target, port, workers=workers, root_path=root_path),
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals the workers too
        )
        proc._servers_log = log  # type: ignore[attr-defined]
        try:
            _wait_for_port(port, proc, timeout)
        except _PortTaken as exc:
            last_error = exc
            stop(proc)
            continue
        except BaseException:
            stop(proc)
            raise
        return proc, port
    raise RuntimeError(f"{server} found no free port in 5 attempts: {last_error}")


class _PortTaken(RuntimeError):
    pass


def _wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = output(proc)
            if any(marker in out.lower() for marker in _ADDRESS_IN_USE):
                raise _PortTaken(out[-500:])
            raise RuntimeError(f"server exited with {proc.returncode}: {out!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        # Something answered; make sure it is not another test's server that won the race
        # for the port while ours is failing to bind.
        time.sleep(0.05)
        if proc.poll() is None:
            return
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def output(proc: subprocess.Popen[Any]) -> str:
    """What the server (and its workers) wrote so far."""
    log: IO[bytes] | None = getattr(proc, "_servers_log", None)
    if log is None or log.closed:
        return getattr(proc, "_servers_output", "")
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # only a process we may not signal is left: not ours
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> str:
    """Stop the server as a process manager would; return everything it printed.

    SIGTERM goes to the supervisor alone first (as docker or kubernetes send it): each server
    then shuts its workers down its own way (hypercorn's workers do not survive a SIGTERM of
    their own: signalling the whole group would skip their lifespan shutdown). Whatever is
    left of the group after ``timeout`` (or once the supervisor is gone) is SIGTERMed, then
    SIGKILLed.
    """
    pgid = proc.pid  # start_new_session: the server leads its own group
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid) and proc.poll() is not None:
            break
        _signal_group(pgid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.05)
    if proc.poll() is None:
        proc.wait()
    out = output(proc)
    log = getattr(proc, "_servers_log", None)
    if log is not None and not log.closed:
        log.close()
    proc._servers_output = out  # type: ignore[attr-defined]
    return out
