"""Real highly available Redis set-ups for tests: a Redis Cluster and a Sentinel group.

Every server runs on free 127.0.0.1 ports in a temp dir of its own, without persistence,
and is stopped (SIGKILL if need be) when the context manager exits. ``kill_primary()``
kills the primary the limit's keys live on, which is what a failover test needs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

START_TIMEOUT = 30.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)


def _port_pair() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def _ping(port: int) -> bool:
    client = _client(port)
    try:
        return bool(client.ping())
    finally:
        client.close()


class _Servers:
    """redis-server processes we own, each in its own directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="buttress-redis-ha-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, conf: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make tools installs it)")
        workdir = self.root / str(port)
        workdir.mkdir()
        first: list[str] = []
        if conf is not None:  # sentinels rewrite their config file: it must be theirs
            (workdir / "sentinel.conf").write_text(conf)
            first = [str(workdir / "sentinel.conf")]
        self.procs[port] = subprocess.Popen(
            [
                binary,
                *first,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class Cluster:
    """Three primaries with a replica each, created by ``redis-cli --cluster create``."""

    def __init__(self, servers: _Servers, ports: list[int]) -> None:
        self.servers = servers
        self.ports = ports
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3])

    def flush(self) -> None:
        """Remove every key (each primary's replica follows)."""
        for port in self.ports:
            if _role(port) == "master":
                client = _client(port)
                try:
                    client.flushall()
                finally:
                    client.close()

    def holder_of_keys(self) -> int | None:
        """The port of the live primary holding keys (the test's limit), if any."""
        for port in self.ports:
            if self.servers.procs[port].poll() is not None:
                continue
            try:
                if _role(port) == "master":
                    client = _client(port)
                    try:
                        if client.dbsize():
                            return port
                    finally:
                        client.close()
            except (redis.RedisError, OSError):
                continue
        return None


def _role(port: int) -> str:
    client = _client(port)
    try:
        return str(client.execute_command("ROLE")[0], "ascii")
    finally:
        client.close()


@contextmanager
def redis_cluster() -> Iterator[Cluster]:
    """A six-node cluster (3 primaries, 3 replicas) that fails over within about a second."""
    servers = _Servers()
    try:
        ports = [_port_pair() for _ in range(6)]
        for port in ports:
            servers.start(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                # Long enough that a node starved of CPU (a loaded CI machine) is not
                # failed over by mistake, short enough for a quick real failover.
                "3000",
            )
        for port in ports:
            wait_until(lambda port=port: _ping(port), f"redis-server on {port} answering PING")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
        )

        def settled() -> bool:
            for port in ports:
                client = _client(port)
                try:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or "cluster_known_nodes:6" not in info:
                        return False
                    if (
                        _role(port) == "slave"
                        and client.info("replication").get("master_link_status") != "up"
                    ):
                        return False
                finally:
                    client.close()
            return True

        wait_until(settled, "the cluster reaching state ok with every replica in sync")
        yield Cluster(servers, ports)
    finally:
        servers.close()


class Sentinels:
    """A primary, a replica and three sentinels (quorum 2) watching service ``primary``."""

    SERVICE = "primary"

    def __init__(self, servers: _Servers, primary: int, replica: int, sentinels: list[int]) -> None:
        self.servers = servers
        self.primary = primary
        self.replica = replica
        self.sentinels = sentinels
        self.url = (
            "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinels) + f"/{self.SERVICE}"
        )

    def flush(self) -> None:
        """Remove every key (the replica follows)."""
        client = _client(self.primary_port())
        try:
            client.flushall()
        finally:
            client.close()

    def primary_port(self) -> int:
        """The primary's port as the sentinels report it."""
        client = _client(self.sentinels[0])
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            return int(port)
        finally:
            client.close()


@contextmanager
def redis_sentinel() -> Iterator[Sentinels]:
    """A Sentinel group that notices a dead primary after one second and promotes the replica."""
    servers = _Servers()
    try:
        primary, replica, *sentinels = [_port_pair() for _ in range(5)]
        servers.start(primary)
        servers.start(replica, "--replicaof", "127.0.0.1", str(primary))
        conf = (
            f"sentinel monitor primary 127.0.0.1 {primary} 2\n"
            "sentinel down-after-milliseconds primary 1000\n"
            "sentinel failover-timeout primary 5000\n"
            "sentinel parallel-syncs primary 1\n"
        )
        for port in sentinels:
            servers.start(port, "--sentinel", conf=conf)
        for port in (primary, replica, *sentinels):
            wait_until(lambda port=port: _ping(port), f"redis on {port} answering PING")

        def in_sync() -> bool:
            client = _client(replica)
            try:
                return client.info("replication").get("master_link_status") == "up"
            finally:
                client.close()

        def watched() -> bool:
            for port in sentinels:
                client = _client(port)
                try:
                    state = client.sentinel_master("primary")
                    if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                        return False
                finally:
                    client.close()
            return True

        wait_until(in_sync, "the replica syncing with the primary")
        wait_until(watched, "every sentinel knowing the others and the replica")
        yield Sentinels(servers, primary, replica, sentinels)
    finally:
        servers.close()
