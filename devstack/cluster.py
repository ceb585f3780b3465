"""A local Redis Cluster of embedded servers: three masters, no replicas, on given ports.

Each master keeps its data (append-only file) and its cluster state (``nodes.conf``) in its own
directory, so a master killed and started again comes back with its slots and its data. The
cluster is formed once with ``valkey-cli --cluster create``; starting it again over the same
directories finds it formed.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from devstack.servers import ManagedServer, ServerError, redis_cli, redis_server

MASTERS = 3
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
PORT_RANGE = (20000, 55535)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int = MASTERS) -> list[int]:
    """``count`` ports that are free with their cluster bus ports (port + 10000) free too."""
    found: list[int] = []
    for port in random.sample(range(*PORT_RANGE), 2000):
        if _free(port) and _free(port + BUS_OFFSET):
            found.append(port)
            if len(found) == count:
                return found
    raise ServerError("no free ports for a cluster")


def _command(port: int, *args: str, timeout_s: float = 1.0) -> str:
    """One command on a fresh connection, answered as text (inline protocol; bulk replies only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and len(rest) >= int(head[1:]) + 2:
                return rest[: int(head[1:])].decode()
            if head[:1] in (b"+", b"-", b":"):
                return head[1:].decode()
    return data.decode(errors="replace")


class RedisCluster:
    """Three cluster masters on ``ports`` (127.0.0.1), data under ``data_dir/node-<port>``."""

    def __init__(self, ports: list[int], data_dir: Path) -> None:
        if len(ports) != MASTERS:
            raise ValueError(f"a cluster here has {MASTERS} masters")
        self.nodes: list[ManagedServer] = [
            redis_server(port, data_dir / f"node-{port}", cluster=True) for port in ports
        ]

    @property
    def url(self) -> str:
        """The URL of the first node; a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, *, timeout_s: float = 30.0) -> RedisCluster:
        """Start every master, form the cluster if it is not yet, and wait until all answer
        ``cluster_state:ok``. Raises ServerError."""
        try:
            for node in self.nodes:
                if node.exited() is not None or node.process is None:
                    node.start(timeout_s=timeout_s)
            if not self._formed():
                self._create()
            self.wait_ok(timeout_s=timeout_s)
        except BaseException:
            self.stop()  # a master that would not start must not leave the others running
            raise
        return self

    def _formed(self) -> bool:
        info = _command(self.nodes[0].port, "CLUSTER", "INFO")
        return "cluster_slots_assigned:16384" in info

    def _create(self) -> None:
        argv = [redis_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ServerError(f"forming the cluster failed: {done.stdout.decode()} {done.stderr.decode()}")

    def wait_ok(self, *, timeout_s: float = 30.0) -> None:
        """Wait until every running master reports the cluster ok. Raises ServerError."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(
                    "cluster_state:ok" in _command(node.port, "CLUSTER", "INFO")
                    for node in self.nodes
                    if node.exited() is None
                ):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerError(f"the cluster on {self.ports} was not ok within {timeout_s}s")

    def node_of_slot(self, slot: int) -> ManagedServer:
        """The master that serves ``slot`` (asked of a running node)."""
        for node in self.nodes:
            if node.exited() is None and node.process is not None:
                answer = _command(node.port, "CLUSTER", "NODES")
                for line in answer.splitlines():
                    fields = line.split()
                    if "master" not in fields[2]:
                        continue
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    for span in fields[8:]:
                        low, _, high = span.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return next(n for n in self.nodes if n.port == port)
        raise ServerError(f"no running node knows slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
