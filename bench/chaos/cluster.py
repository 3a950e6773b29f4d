"""A three-node RabbitMQ cluster of our own on loopback, which the run may break at will.

Each node has its own node name, AMQP and distribution ports, data, log and pid
files under one temporary directory owned by the ``rabbitmq`` user, its own config
file (the machine's /etc/rabbitmq config would put it on the shared broker's port)
and an empty plugins file. The nodes share the machine's Erlang cookie and epmd,
which is what lets them (and ``rabbitmqctl``) talk to each other. The shared broker
(``rabbit@...`` on 5672) is never addressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.common import arun, pick_ports, port_accepts

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/sbin/rabbitmqctl"  # Debian's wrapper runs it as the rabbitmq user
RABBITMQ_HOME = "/var/lib/rabbitmq"  # holds the shared .erlang.cookie
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def short_hostname() -> str:
    """The host part of node names: ``hostname -s`` if it resolves to loopback."""
    host = socket.gethostname().split(".")[0]
    try:
        if socket.gethostbyname(host).startswith("127."):
            return host
    except OSError:
        pass
    return "localhost"


@dataclass
class RabbitNode:
    name: str
    amqp_port: int
    dist_port: int
    home: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": RABBITMQ_HOME,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_path.parent / self.name.split("@")[0]),
            "RABBITMQ_PID_FILE": str(self.home / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }


class RabbitCluster:
    def __init__(self, workdir: Path, suffix: str, size: int = 3) -> None:
        host = short_hostname()
        ports = pick_ports(2 * size)
        self.root = workdir / "rabbitmq"
        self.nodes = [
            RabbitNode(
                name=f"chaos{i + 1}_{suffix}@{host}",
                amqp_port=ports[2 * i],
                dist_port=ports[2 * i + 1],
                home=self.root / f"node{i + 1}",
                log_path=workdir / "logs" / f"rabbit-node{i + 1}.log",
            )
            for i in range(size)
        ]

    @property
    def seed(self) -> RabbitNode:
        return self.nodes[0]

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def amqp_url(self, failover: bool) -> str:
        """All nodes comma-separated (client failover), else the first node only."""
        if failover:
            return ",".join(n.amqp_url for n in self.nodes)
        return self.seed.amqp_url

    # -- life cycle ------------------------------------------------------------

    def _prepare(self) -> None:
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            node.log_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.chown(node.log_path.parent, "rabbitmq", "rabbitmq")
            (node.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                "vm_memory_high_watermark.relative = 0.2\n"
                "disk_free_limit.absolute = 50MB\n"
            )
            (node.home / "enabled_plugins").write_text("[].\n")
            (node.home / "rabbitmq-env.conf").write_text("")
        shutil.chown(self.root.parent, "rabbitmq")
        for path in [self.root, *self.root.rglob("*")]:
            shutil.chown(path, "rabbitmq", "rabbitmq")
        # mkdtemp makes the parent 0700: let the rabbitmq user through to its own files.
        self.root.parent.chmod(0o755)

    def _spawn(self, node: RabbitNode) -> None:
        log = open(node.log_path, "ab")  # noqa: SIM115 - inherited by the child, closed below
        try:
            node.popen = subprocess.Popen(
                ["runuser", "-u", "rabbitmq", "--", "env", "-i"]
                + [f"{k}={v}" for k, v in node.env().items()]
                + [RABBITMQ_SERVER],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=RABBITMQ_HOME,
                start_new_session=True,
            )
        finally:
            log.close()

    async def _wait_up(self, node: RabbitNode, timeout: float = START_TIMEOUT) -> None:
        """Up = its AMQP listener accepts (listeners open last in the boot)."""
        deadline = time.monotonic() + timeout
        while not await port_accepts(node.amqp_port):
            if not node.alive():
                raise RuntimeError(f"RabbitMQ node {node.name} exited; see {node.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ node {node.name} not up after {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def start(self) -> None:
        """Start every node, then join the others to the first one."""
        self._prepare()
        for node in self.nodes:
            self._spawn(node)
        await asyncio.gather(*(self._wait_up(n) for n in self.nodes))
        for node in self.nodes[1:]:
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", self.seed.name)
            await self.ctl(node, "start_app")
        running = await self.running_nodes()
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running nodes {running}")

    async def start_node(self, node: RabbitNode) -> None:
        if not node.alive():
            self._spawn(node)
        await self._wait_up(node)

    async def stop_node(self, node: RabbitNode) -> None:
        """A clean ``rabbitmqctl stop`` (the node leaves nothing half-written)."""
        with contextlib.suppress(RuntimeError):
            await self.ctl(node, "stop", timeout=STOP_TIMEOUT)
        if node.popen is not None:
            try:
                await asyncio.to_thread(node.popen.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill(node)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop_node(n) for n in self.nodes))

    async def start_all(self) -> None:
        """All at once: after a full stop each node waits for its peers to come back."""
        for node in self.nodes:
            if not node.alive():
                self._spawn(node)
        await asyncio.gather(*(self._wait_up(n) for n in self.nodes))

    def destroy(self) -> None:
        """Kill every node and remove its files (the clean-up step; synchronous)."""
        for node in self.nodes:
            self._kill(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self, node: RabbitNode) -> None:
        if node.popen is None:
            return
        if node.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.popen.wait(10)

    # -- questions ---------------------------------------------------------------

    async def ctl(self, node: RabbitNode, *args: str, timeout: float = 120.0) -> str:
        return await arun([RABBITMQCTL, "-q", "-n", node.name, *args], timeout=timeout)

    def any_running(self) -> RabbitNode:
        for node in self.nodes:
            if node.alive():
                return node
        raise RuntimeError("no RabbitMQ node is running")

    async def running_nodes(self) -> list[str]:
        out = await self.ctl(self.any_running(), "eval", "rabbit_nodes:all_running().")
        return [part.strip(" '[]\n") for part in out.strip().strip("[]").split(",") if part]

    async def queue_leader(self, queue: str) -> str:
        """The node that leads a quorum queue (in the default vhost)."""
        out = await self.ctl(
            self.any_running(), "list_queues", "--no-table-headers", "name", "leader"
        )
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == queue:
                return parts[1]
        raise RuntimeError(f"queue {queue} not found:\n{out}")

    async def queue_depths(self) -> dict[str, int]:
        """Ready + unacked messages per queue (what is still to be worked on)."""
        out = await self.ctl(
            self.any_running(), "list_queues", "--no-table-headers", "name", "messages"
        )
        depths: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                depths[parts[0]] = int(parts[1])
        return depths
