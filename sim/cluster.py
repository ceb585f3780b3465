"""The real stack of one simulation: its own valkey (AOF) and nx-27017, the ingest API, a worker,
the flusher and two gateways, each a process on a free port that a fault can kill and restart on
the same port (Redis from its AOF, nx-27017 from its data directory)."""

from __future__ import annotations

import secrets
from pathlib import Path

from contract.settings import Settings
from devstack.processes import Proc
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server

GATEWAYS = ("A", "B")


class Cluster:
    """Start with :meth:`start`, stop with :meth:`close`. Process names: ``redis``, ``mongo``,
    ``api``, ``worker``, ``flusher``, ``gateway-A``, ``gateway-B``."""

    def __init__(self, workdir: Path, *, flush_interval_s: float, access_token_ttl_s: int) -> None:
        self.workdir = workdir
        self.redis = redis_server(free_port(), workdir / "redis")
        self.mongo = mongo_server(free_port(), workdir / "mongo")
        ingest_port = free_port()
        self.gateway_ports = {name: free_port() for name in GATEWAYS}
        origins = ",".join(f"http://127.0.0.1:{p}" for p in self.gateway_ports.values())
        self.settings = Settings(
            redis_url=self.redis.url,
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
        self.procs: dict[str, Proc] = {
            "api": Proc("ingest.api", self.settings, logs, ingest_port),
            "worker": Proc("ingest.worker", self.settings, logs),
            "flusher": Proc("ingest.flusher", self.settings, logs),
        }
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
        return {"redis": self.redis, "mongo": self.mongo}

    def start(self) -> Cluster:
        self.redis.start()
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
        """Start ``name`` again on its port (after :meth:`kill`)."""
        server = self.servers().get(name)
        if server is not None:
            server.start(timeout_s=60.0)
        else:
            self.procs[name].start(timeout_s=60.0)

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
        self.redis.stop()
