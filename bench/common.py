"""What every bench shares: its own servers on free ports, process measures, percentiles.

A bench starts embedded Redis and nx-27017 and the Scorecast processes it needs with
:func:`bench_stack` (a context manager that stops all of them, also on an error or Ctrl-C),
reads a process's RSS and CPU from ``/proc``, and spreads its clients over
:data:`SOURCE_ADDRESSES` (one source address has ~28,000 ephemeral ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server

SOURCE_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def last_sse_id(tail: bytes, data: bytes) -> tuple[int | None, bytes]:
    """The ``id:`` of the newest complete SSE ``id`` line in ``tail + data`` (None if there is
    none yet), and the bytes to keep as the next chunk's ``tail``."""
    buf = tail + data
    at = buf.rfind(b"id: ")
    if at < 0:
        return None, buf[-16:]
    end = buf.find(b"\n", at)
    if end < 0:
        return None, buf[at:]
    return int(buf[at + 4 : end]), b""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def pct(values: Sequence[float], p: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def settle(pid: int, *, busy_below: float = 0.1, timeout_s: float = 60.0) -> None:
    """Until process ``pid`` used less than ``busy_below`` of a core over half a second (at most
    ``timeout_s``): the work of an earlier phase (closing clients, a backlog) is not measured."""
    for _ in range(int(timeout_s * 2)):
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < busy_below * 0.5:
            return


def raise_nofile_limit() -> int:
    """Raise this process's open-files soft limit to the hard one (one descriptor per client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class BenchStack:
    stack: Stack
    redis: ManagedServer
    mongo: ManagedServer

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def issuer(self) -> TokenIssuer:
        return TokenIssuer(self.stack.settings)


@contextlib.asynccontextmanager
async def bench_stack(modules: Sequence[str], **settings: object) -> AsyncIterator[BenchStack]:
    """Redis and nx-27017 on free ports and ``modules`` (``ingest.api``, ``gateway``, ...) started
    with bench settings (``settings`` override them); everything is stopped on the way out."""
    work = Path(tempfile.mkdtemp(prefix="scorecast-bench-"))
    redis = redis_server(free_port(), work / "redis").start()
    mongo = mongo_server(free_port(), work / "mongo").start()
    base = Settings(
        redis_url=redis.url,
        mongo_url=mongo.url,
        mongo_db="bench",
        jwt_secret=uuid.uuid4().hex * 2,
        rate_limit_per_s=10_000.0,
        rate_limit_burst=10_000,
        ws_rate_limit_per_s=1e9,
        ws_rate_limit_burst=1_000_000,
        stream_block_ms=50,
        slow_client_timeout_s=30.0,
        dev_login_enabled=True,  # the bench's users log in once, so a scorer can score them
    )
    stack = Stack(base.replace(**settings) if settings else base, work)
    try:
        for module in modules:
            stack.start(module)
        yield BenchStack(stack, redis, mongo)
    finally:
        stack.close()
        mongo.stop()
        redis.stop()


class Scorer:
    """Writes scores through the ingest API as a scoring service would."""

    def __init__(self, http: httpx.AsyncClient, issuer: TokenIssuer) -> None:
        self.http = http
        self.token = issuer.access_token(user_id="points-service", name="Points service", roles=["scorer"])

    async def login(self, user_id: str, name: str) -> None:
        """A score write names a user Scorecast knows: each logs in once (development login)."""
        r = await self.http.post("/api/v1/auth/login", json={"userId": user_id, "name": name, "region": "EU"})
        r.raise_for_status()

    async def score(self, user_id: str, increment: int) -> None:
        r = await self.http.post(
            "/api/v1/scores/update",
            json={"userId": user_id, "scoreIncrement": increment, "actionId": str(uuid.uuid4())},
            headers={"authorization": f"Bearer {self.token}"},
        )
        r.raise_for_status()

    async def seed_global(self) -> None:
        """A full ``global`` top 10 (and the user ``climber``, whose score the benches raise)."""
        await self.login("climber", "Climber")
        for i in range(10):
            await self.login(f"seed{i}", f"Seed {i}")
            await self.score(f"seed{i}", 100 + i)
        for _ in range(100):
            r = await self.http.get("/api/v1/scores/leaderboard")
            if r.status_code == 200 and len(r.json()["entries"]) == 10:
                return
            await asyncio.sleep(0.1)
        raise SystemExit("the global board never had 10 entries")
