"""Private RabbitMQ nodes and Redis servers, for tests that stop, kill, restart or cluster a service.

Each one lives on loopback with a node name, ports and a data directory of
its own (under the test's tmp_path) and is removed when the test ends, so
the shared services on 5672 and 6379, which other people's sagas may be
using, are never touched. A machine without the server binaries skips such
tests with a sentence saying what is missing, unless SAGA_TEST_PRIVATE=1
asks for them, in which case they fail.

    async with rabbit_node(tmp_path) as node:       # node.url, node.stop_app(), node.kill(), node.start()
    async with rabbit_cluster(tmp_path, 3) as nodes:
    async with redis_server(tmp_path) as server:    # server.url, await server.kill(), server.start()
    async with redis_cluster(tmp_path) as cluster:  # 3 masters, 3 replicas; cluster.url, cluster.servers
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RABBIT_BIN = Path(os.environ.get("SAGA_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 55535)
        if _free(port) and _free(port + 10000):
            return port


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _need(binary: Path | str, what: str) -> None:
    if shutil.which(str(binary)) is None and not Path(binary).exists():
        message = f"this test starts a private {what} and needs {binary} (install it, or set SAGA_TEST_RABBITMQ_BIN)"
        if os.environ.get("SAGA_TEST_PRIVATE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


async def _run(
    *command: str, env: dict[str, str] | None = None, timeout: float = 60.0, stdin: bytes | None = None
) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {out.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


@dataclass
class RabbitNode:
    """One RabbitMQ node of our own: `rabbitmq-server` run directly, not through the system's service."""

    root: Path
    name: str = field(default_factory=lambda: f"sagatest-{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.root / "rabbit.pid"

    def env(self) -> dict[str, str]:
        # Our own config and env files, so that the system's (which name the
        # shared node and its port) are not read; HOME holds our own cookie.
        return {
            **os.environ,
            "HOME": str(self.root),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # A node that dies writes its crash dump here, not into the caller's tree.
            "ERL_CRASH_DUMP": str(self.root / "erl_crash.dump"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def prepare(self, cookie: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        (self.root / "rabbitmq.conf").write_text(config)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        path = self.root / ".erlang.cookie"
        path.write_text(cookie)
        path.chmod(0o400)

    async def ctl(self, *args: str, timeout: float = 60.0, stdin: bytes | None = None) -> str:
        command = (str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args)
        return await _run(*command, env=self.env(), timeout=timeout, stdin=stdin)

    async def set_password(self, user: str, password: str) -> None:
        """Give `user` a password through standard input, as `saga access` tells an operator to."""
        await self.ctl("change_password", user, stdin=f"{password}\n".encode())

    async def run_script(self, script: str) -> dict[str, str]:
        """Run each `rabbitmqctl ...` line of `script` (as `saga access` prints it) against this node.

        Returns the password of each user it added with one on its line.
        """
        passwords = {}
        for line in script.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            program, *args = shlex.split(line)
            if program != "rabbitmqctl":
                raise ValueError(f"not a rabbitmqctl command: {line!r}")
            await self.ctl(*args)
            if args[0] == "add_user" and len(args) == 3:
                passwords[args[1]] = args[2]
        return passwords

    async def start(self) -> None:
        """Boot the node (or boot it again after stop or kill) and wait until it serves."""
        self.pid_file.unlink(missing_ok=True)
        await _run(str(RABBIT_BIN / "rabbitmq-server"), "-detached", env=self.env())
        await self._serving()

    async def _serving(self, timeout: float = 120.0) -> None:
        # Until the VM has registered its name, rabbitmqctl cannot even ask.
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.ctl("await_startup", "--timeout", "30", timeout=60)
                return
            except RuntimeError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def stop_app(self) -> None:
        await self.ctl("stop_app")

    async def start_app(self) -> None:
        await self.ctl("start_app")
        await self._serving()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.ctl("stop", timeout=60)

    def kill(self) -> None:
        """kill -9 the node's Erlang VM: no goodbye to clients or peers."""
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)

    async def wait_dead(self, timeout: float = 30.0) -> None:
        pid = int(self.pid_file.read_text().strip())
        deadline = asyncio.get_running_loop().time() + timeout
        while _alive(pid):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"node {self.name} (pid {pid}) still runs after {timeout}s")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def rabbit_cluster(tmp_path: Path, size: int = 1) -> AsyncIterator[list[RabbitNode]]:
    """`size` private RabbitMQ nodes joined into one cluster; all stopped and removed at the end."""
    _need(RABBIT_BIN / "rabbitmq-server", "RabbitMQ node")
    cookie = uuid.uuid4().hex
    nodes = [RabbitNode(tmp_path / f"rabbit-{n}") for n in range(size)]
    try:
        for node in nodes:
            node.prepare(cookie)
        await asyncio.gather(*(node.start() for node in nodes))
        for node in nodes[1:]:
            await node.ctl("stop_app")
            await node.ctl("join_cluster", nodes[0].name)
            await node.start_app()
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        for node in nodes:
            node.kill()
            shutil.rmtree(node.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def rabbit_node(tmp_path: Path) -> AsyncIterator[RabbitNode]:
    async with rabbit_cluster(tmp_path, 1) as nodes:
        yield nodes[0]


@dataclass
class RedisServer:
    """One redis-server of our own, in the foreground as our child, on a port and in a folder of its own."""

    root: Path
    port: int = field(default_factory=free_port)
    cluster: bool = False
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start (or start again, on the same port and data) and wait until it answers PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root), "--save", ""]
        args += ["--appendonly", "yes", "--logfile", str(self.root / "redis.log")]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.root / "nodes.conf")]
            args += ["--cluster-node-timeout", "2000"]
        self.process = await asyncio.create_subprocess_exec(
            "redis-server", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):
            with contextlib.suppress(RuntimeError):
                if "PONG" in await self.cli("PING"):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not answer")

    async def cli(self, *args: str) -> str:
        return await _run("redis-cli", "-p", str(self.port), *args, timeout=30)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """kill -9: what was not yet replicated or written is gone."""
        if self.process is not None and self.running:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.running:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                await self.kill()


@contextlib.asynccontextmanager
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    _need("redis-server", "Redis server")
    server = RedisServer(tmp_path / f"redis-{uuid.uuid4().hex[:6]}")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@dataclass
class RedisCluster:
    servers: list[RedisServer]

    @property
    def url(self) -> str:
        return self.servers[0].url

    async def masters(self) -> list[RedisServer]:
        found = []
        for server in self.servers:
            if server.running:
                with contextlib.suppress(RuntimeError):
                    if "role:master" in await server.cli("INFO", "replication"):
                        found.append(server)
        return found


@contextlib.asynccontextmanager
async def redis_cluster(tmp_path: Path, masters: int = 3, replicas: int = 1) -> AsyncIterator[RedisCluster]:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, ready to serve every slot."""
    _need("redis-server", "Redis Cluster")
    _need("redis-cli", "Redis Cluster")
    root = tmp_path / f"redis-cluster-{uuid.uuid4().hex[:6]}"
    servers = [RedisServer(root / str(n), cluster_port(), cluster=True) for n in range(masters * (1 + replicas))]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        addresses = [f"127.0.0.1:{server.port}" for server in servers]
        await _run("redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes")
        for _ in range(200):
            if "cluster_state:ok" in await servers[0].cli("CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the Redis Cluster did not reach cluster_state:ok")
        made = RedisCluster(servers)
        # Until each master's replicas have synced, a WAIT for them would time out.
        for _ in range(300):
            infos = [await master.cli("INFO", "replication") for master in await made.masters()]
            if len(infos) == masters and all(i.count("state=online") == replicas for i in infos):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the Redis Cluster's replicas did not sync")
        yield made
    finally:
        await asyncio.gather(*(server.stop() for server in servers))
        shutil.rmtree(root, ignore_errors=True)
