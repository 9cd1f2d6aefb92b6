"""Highly available Redis for tests: a 6-node Redis Cluster and a Sentinel group, on loopback.

Both start in a few seconds and are torn down by PID (never by name). What makes them fast and
reliable:

- every node: no persistence, ``--repl-diskless-sync-delay 0`` (a replica syncs at once);
- the cluster: ``--cluster-node-timeout 1000`` and slots assigned by hand (no ``redis-cli --cluster
  create`` and its waiting loops);
- the sentinels: ``down-after-milliseconds 1000``, fixed ``sentinel myid`` values and pre-seeded
  ``known-replica`` / ``known-sentinel`` lines, so they agree at once instead of discovering each
  other through hello messages;
- :meth:`RedisCluster6.start` and :meth:`SentinelGroup.start` return only once ``WAIT 1`` answers 1
  on every primary: a replica that has not acknowledged yet would lose everything on a kill.

Admin commands go through ``redis-cli`` (a separate process), so these helpers never depend on the
client library under test.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.redis_server import free_port, redis_server_binary

START_TIMEOUT_SECONDS = 15.0
NODE_TIMEOUT_MS = 1000
DOWN_AFTER_MS = 1000
SERVICE = "hubmaster"


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cli(port: int, *args: str, timeout: float = 3.0) -> str:
    """One command through ``redis-cli`` against ``127.0.0.1:port``; its raw output, stripped."""
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    return result.stdout.strip()


def _wait(what: str, predicate: object, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if predicate():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Node:
    """One ``redis-server`` (or ``--sentinel``) process, known by its PID."""

    def __init__(self, directory: Path, port: int, args: list[str]) -> None:
        self.port = port
        self.dir = directory
        self.args = args
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [redis_server_binary(), *self.args],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.pid = self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would; waits for the process."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)

    def answers(self) -> bool:
        return cli(self.port, "PING", timeout=1) == "PONG"


def _server_args(directory: Path, port: int) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(directory / "redis.log"),
        "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
    ]


def _wait_replicated(port: int) -> None:
    _wait(f"a replica to acknowledge on port {port}", lambda: cli(port, "WAIT", "1", "200") == "1")


class RedisCluster6:
    """A Redis Cluster of 3 primaries and 3 replicas on ``127.0.0.1`` (one replica each)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="redis-cluster-")
        base = Path(self._tmp.name)
        self.nodes: list[_Node] = []
        for n in range(6):
            port = cluster_port()
            directory = base / f"n{n}"
            args = [
                *_server_args(directory, port), "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica may take over at once, whatever its last contact with the primary.
                "--cluster-replica-validity-factor", "0",
            ]
            self.nodes.append(_Node(directory, port, args))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> RedisCluster6:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(f"node {node.port}", node.answers)
        first = self.nodes[0].port
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for node, (low, high) in zip(self.nodes[:3], ranges, strict=True):
            cli(node.port, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        for node in self.nodes[1:]:
            cli(first, "CLUSTER", "MEET", "127.0.0.1", str(node.port))
        ids = [cli(node.port, "CLUSTER", "MYID") for node in self.nodes]
        for node in self.nodes:
            _wait("every node to know every other",
                  lambda node=node: len(cli(node.port, "CLUSTER", "NODES").splitlines()) == 6)
        for replica, primary_id in zip(self.nodes[3:], ids[:3], strict=True):
            _wait("a replica to follow its primary",
                  lambda r=replica, p=primary_id: cli(r.port, "CLUSTER", "REPLICATE", p) == "OK")
        for node in self.nodes:
            _wait("cluster_state:ok",
                  lambda node=node: "cluster_state:ok" in cli(node.port, "CLUSTER", "INFO"))
        for node in self.primaries():
            _wait_replicated(node.port)
        return self

    def primaries(self) -> list[_Node]:
        """The live nodes that are primaries now."""
        return [n for n in self.nodes if n.alive and _role(n.port) == "master"]

    def primary_of(self, key: str) -> _Node:
        """The live primary that owns ``key``'s slot now."""
        slot = int(cli(self.nodes[0].port if self.nodes[0].alive else self.primaries()[0].port,
                       "CLUSTER", "KEYSLOT", key))
        for node in self.primaries():
            if any(_owns(line, slot) for line in cli(node.port, "CLUSTER", "NODES").splitlines()
                   if "myself" in line.split()[2]):
                return node
        raise RuntimeError(f"no live primary owns slot {slot}")

    def replica_of(self, primary: _Node) -> _Node:
        """The live replica that follows ``primary`` now."""
        primary_id = cli(primary.port, "CLUSTER", "MYID")
        for node in self.nodes:
            if not node.alive or node is primary:
                continue
            for line in cli(node.port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2] and fields[3] == primary_id:
                    return node
        raise RuntimeError(f"no replica follows {primary.port}")

    def slot_owners(self) -> dict[int, int]:
        """Slot -> port of the live primary that owns it now."""
        owners: dict[int, int] = {}
        for node in self.primaries():
            for line in cli(node.port, "CLUSTER", "NODES").splitlines():
                if "myself" in line.split()[2]:
                    for part in line.split()[8:]:
                        if not part.startswith("["):
                            low, _, high = part.partition("-")
                            owners.update(dict.fromkeys(range(int(low), int(high or low) + 1),
                                                        node.port))
        return owners

    def wait_healthy(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Until every live node says ``cluster_state:ok`` (after a failover)."""
        for node in self.nodes:
            if node.alive:
                _wait("cluster_state:ok",
                      lambda node=node: "cluster_state:ok" in cli(node.port, "CLUSTER", "INFO"),
                      timeout)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self._tmp.cleanup()

    def __enter__(self) -> RedisCluster6:
        try:
            return self.start()
        except BaseException:
            self.close()  # a start that timed out leaves no process behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _role(port: int) -> str:
    for line in cli(port, "ROLE", timeout=1).splitlines()[:1]:
        return line.strip()
    return ""


def _owns(nodes_line: str, slot: int) -> bool:
    for part in nodes_line.split()[8:]:
        if part.startswith("["):
            continue
        low, _, high = part.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


class SentinelGroup:
    """A primary, one replica and 3 sentinels (quorum 2) watching service ``hubmaster``."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="redis-sentinel-")
        base = Path(self._tmp.name)
        primary_port, replica_port = free_port(), free_port()
        self.primary = _Node(base / "primary", primary_port, _server_args(base / "primary",
                                                                          primary_port))
        self.replica = _Node(
            base / "replica", replica_port,
            [*_server_args(base / "replica", replica_port),
             "--replicaof", "127.0.0.1", str(primary_port)],
        )
        self.sentinels: list[_Node] = []
        ports = [free_port() for _ in range(3)]
        myids = [f"{n + 1:040x}" for n in range(3)]
        for n, port in enumerate(ports):
            directory = base / f"s{n}"
            directory.mkdir(parents=True)
            lines = [
                f"port {port}", "bind 127.0.0.1", f"dir {directory}",
                f"logfile {directory / 'sentinel.log'}", f"sentinel myid {myids[n]}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"sentinel parallel-syncs {SERVICE} 1",
                f"sentinel known-replica {SERVICE} 127.0.0.1 {replica_port}",
                *(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {myids[m]}"
                  for m, other in enumerate(ports) if m != n),
            ]
            conf = directory / "sentinel.conf"
            conf.write_text("\n".join(lines) + "\n")
            self.sentinels.append(_Node(directory, port, [str(conf), "--sentinel"]))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> SentinelGroup:
        for node in (self.primary, self.replica, *self.sentinels):
            node.start()
        for node in (self.primary, self.replica, *self.sentinels):
            _wait(f"node {node.port}", node.answers)
        _wait_replicated(self.primary.port)
        for sentinel in self.sentinels:
            _wait("the sentinels to see the primary and its replica",
                  lambda s=sentinel: self._sentinel_ready(s.port))
        return self

    def _sentinel_ready(self, port: int) -> bool:
        master = cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).splitlines()
        replicas = cli(port, "SENTINEL", "REPLICAS", SERVICE)
        return master[-1:] == [str(self.primary.port)] and "slave" in replicas and (
            "s_down" not in replicas
        )

    def current_primary_port(self) -> int:
        """The primary's port as the sentinels report it now."""
        for sentinel in self.sentinels:
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, IndexError):
                return int(cli(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                               SERVICE).splitlines()[1])
        raise RuntimeError("no sentinel answered")

    def close(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            node.kill()
        self._tmp.cleanup()

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.close()  # a start that timed out leaves no process behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
