"""A real, private ``redis-server`` for tests: started on 127.0.0.1, a free port, a tmp dir.

``redis_server`` (session-scoped) is shared by the Redis half of the store contract tests;
every test uses its own namespace on it. :class:`RedisServer` starts more (the test that
kills Redis mid-run owns one). Without ``redis-server`` on PATH, Redis tests are skipped
with the reason, except under CI (``CI`` set), where that fails: CI must test both stores.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_redis_server() -> str:
    """Return the path of ``redis-server``; skip (or fail under CI) when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        message = (
            "redis-server is not on PATH; install it (Debian/Ubuntu: "
            "apt-get install -y redis-server) to run the Redis store tests"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis store tests: {message}", pytrace=False)
        pytest.skip(message)
    return found


class RedisServer:
    """One ``redis-server`` process: no persistence, bound to 127.0.0.1.

    Args:
        directory: its working directory (log file; no data is ever saved there).
        port: the port to listen on; default a free one. Reuse a stopped server's port
            to bring "the same" Redis back (empty: nothing is persisted).
    """

    def __init__(
        self, directory: Path, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.extra = extra
        self.executable = require_redis_server()
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain redis-py client for inspecting the server (close it after use)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self.client() as probe:
            while True:
                try:
                    if probe.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start on {self.port}:\n{detail}")
                time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole test session (each test takes a namespace)."""
    require_redis_server()
    with (
        tempfile.TemporaryDirectory(prefix="rerank-cache-redis-") as tmp,
        RedisServer(Path(tmp)) as server,
    ):
        yield server


class RedisClusterServers:
    """A local Redis Cluster of ``size`` primaries and no replicas, each a :class:`RedisServer`.

    Three or more are joined with ``redis-cli --cluster create``; a single node takes every
    slot itself. Started when :meth:`start` returns ``cluster_state:ok`` on every node.
    """

    def __init__(self, directory: Path, size: int = 3, ports: list[int] | None = None) -> None:
        self.directory = directory
        self.servers = [
            RedisServer(
                directory / f"node-{port}",
                port=port,
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / f"node-{port}" / "nodes.conf"),
                    # The default bus port, port + 10000, fails for a free port above 55535.
                    "--cluster-port",
                    str(free_port()),
                ),
            )
            for port in (ports or [free_port() for _ in range(size)])
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node."""
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def client(self) -> redis.RedisCluster:
        """A plain redis-py cluster client for inspecting the cluster (close it after use)."""
        return redis.RedisCluster(host="127.0.0.1", port=self.servers[0].port, socket_timeout=5)

    def start(self) -> RedisClusterServers:
        """Start every node, assign the slots, and wait until the cluster is ok."""
        try:
            for server in self.servers:
                server.start()
            nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
            if len(nodes) >= 3:
                cli = shutil.which("redis-cli") or "redis-cli"
                subprocess.run(
                    [
                        cli,
                        "--cluster",
                        "create",
                        *nodes,
                        "--cluster-replicas",
                        "0",
                        "--cluster-yes",
                    ],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=60,
                )
            else:
                with self.servers[0].client() as node:
                    node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 60
            for server in self.servers:
                with server.client() as node:
                    while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"cluster not ok on {server.port}")
                        time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A private three-primary Redis Cluster for the whole session (each test a namespace)."""
    require_redis_server()
    with (
        tempfile.TemporaryDirectory(prefix="rerank-cache-cluster-") as tmp,
        RedisClusterServers(Path(tmp)) as cluster,
    ):
        yield cluster
