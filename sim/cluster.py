"""The real stack of one simulation: its own valkey (AOF) and nx-27017, the ingest API, a worker,
the flusher and two gateways, each a process on a free port that a fault can kill and restart on
the same port (Redis from its AOF, nx-27017 from its data directory).

With ``redis_cluster`` the one valkey is a 3-master Redis Cluster (``devstack.cluster``) and
every process runs with ``REDIS_CLUSTER=1``; a fault then kills one master (``redis-<i>``) and
starts it again with its data and its slots, as a master that crashed and came back."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from contract.settings import Settings
from devstack.cluster import RedisCluster, cluster_ports
from devstack.processes import Proc
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server

GATEWAYS = ("A", "B")


class Cluster:
    """Start with :meth:`start`, stop with :meth:`close`. Process names: ``redis`` (on a Redis
    Cluster its masters ``redis-0`` .. ``redis-2``), ``mongo``, ``api``, ``worker`` (with several,
    ``worker-1`` ..), ``flusher``, ``gateway-A``, ``gateway-B``."""

    def __init__(
        self,
        workdir: Path,
        *,
        flush_interval_s: float,
        access_token_ttl_s: int,
        redis_cluster: bool = False,
        workers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.redis_cluster: RedisCluster | None = None
        self.redis_servers: dict[str, ManagedServer]
        if redis_cluster:
            self.redis_cluster = RedisCluster(cluster_ports(), workdir / "redis")
            self.redis_servers = {f"redis-{i}": node for i, node in enumerate(self.redis_cluster.nodes)}
            redis_url = self.redis_cluster.url
        else:
            single = redis_server(free_port(), workdir / "redis")
            self.redis_servers = {"redis": single}
            redis_url = single.url
        self.mongo = mongo_server(free_port(), workdir / "mongo")
        ingest_port = free_port()
        self.gateway_ports = {name: free_port() for name in GATEWAYS}
        origins = ",".join(f"http://127.0.0.1:{p}" for p in self.gateway_ports.values())
        self.settings = Settings(
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            mongo_url=self.mongo.url,
            mongo_db="sim",
            ingest_port=ingest_port,
            public_ingest_url=f"http://127.0.0.1:{ingest_port}",
            cors_origins=origins,
            jwt_secret=secrets.token_hex(32),
            dev_login_enabled=True,
            access_token_ttl_s=access_token_ttl_s,
            flush_interval_s=flush_interval_s,
            stream_block_ms=200,
            claim_idle_ms=3000,
            log_level="warning",
        )
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {"api": Proc("ingest.api", self.settings, logs, ingest_port)}
        self.workers = ("worker",) if workers == 1 else tuple(f"worker-{i}" for i in range(1, workers + 1))
        for name in self.workers:
            self.procs[name] = Proc("ingest.worker", self.settings, logs)
        self.procs["flusher"] = Proc("ingest.flusher", self.settings, logs)
        for name, port in self.gateway_ports.items():
            self.procs[f"gateway-{name}"] = Proc(
                "gateway", self.settings.replace(gateway_port=port), logs, port
            )

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    def gateway_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[name]}"

    def servers(self) -> dict[str, ManagedServer]:
        return {**self.redis_servers, "mongo": self.mongo}

    def start(self) -> Cluster:
        if self.redis_cluster is not None:
            self.redis_cluster.start()
        else:
            self.redis_servers["redis"].start()
        self.mongo.start()
        for proc in self.procs.values():
            proc.start(timeout_s=60.0)
        return self

    def kill(self, name: str) -> None:
        """SIGKILL ``name``: a crash."""
        server = self.servers().get(name)
        if server is not None:
            server.kill()
        else:
            self.procs[name].kill()

    def restart(self, name: str) -> None:
        """Start ``name`` again on its port (after :meth:`kill`); a cluster master, until the
        cluster is ok again."""
        server = self.servers().get(name)
        if server is None:
            self.procs[name].start(timeout_s=60.0)
            return
        server.start(timeout_s=60.0)
        if self.redis_cluster is not None and name in self.redis_servers:
            self.redis_cluster.wait_ok(timeout_s=60.0)  # back with its slots

    def start_master(self, name: str) -> None:
        """Start cluster master ``name`` again (after :meth:`kill`): returns once it answers, the
        cluster may not be ok yet (see :meth:`wait_ok`)."""
        self.redis_servers[name].start(timeout_s=60.0)

    def wait_ok(self) -> None:
        """Wait until every master of the cluster reports ``cluster_state:ok``."""
        if self.redis_cluster is not None:
            self.redis_cluster.wait_ok(timeout_s=60.0)

    def gateway_metrics(self, name: str) -> dict[str, float]:
        """The unlabelled metrics of gateway ``name`` from its ``/metrics`` (empty: no answer)."""
        try:
            text = httpx.get(f"{self.gateway_url(name)}/metrics", timeout=5.0).text
        except httpx.HTTPError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            head, _, value = line.partition(" ")
            if head and not head.startswith("#") and "{" not in head:
                found[head] = float(value)
        return found

    def dead(self) -> list[str]:
        """Processes that exited without being asked to (a crash the simulation did not inject)."""
        down = [n for n, p in self.procs.items() if p.process is None or p.process.poll() is not None]
        down += [n for n, s in self.servers().items() if s.process is None or s.process.poll() is not None]
        return down

    def logs(self, name: str) -> str:
        proc = self.procs.get(name)
        return proc.log() if proc else ""

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop(timeout_s=10.0)
        self.mongo.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        else:
            self.redis_servers["redis"].stop()
