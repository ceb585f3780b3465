"""Two gateway processes on a 3-master Redis Cluster against the same load on one Redis.

    .venv/bin/python -m bench.cluster --clients 2000 --updates 10

Runs the same load twice, one after the other in one run: first on one embedded Redis (classic
Pub/Sub), then on a 3-master cluster of the embedded server (``REDIS_CLUSTER=1``: sharded Pub/Sub,
one subscription per master per gateway). Each run starts the ingest API, one worker and TWO
gateway processes, opens ``--clients`` SSE connections (half on each gateway, over 127.0.0.2-9)
following the global board, then sends ``--updates`` score writes, each its own broadcast.
Reports, side by side:
- gateway CPU (user + system, both gateways) per delivered frame;
- gateway RSS per connection: (RSS with the clients - RSS before) / clients, both gateways;
- score -> client: from the ingest API's 202 to the last and to the median client, p50/p99;
- Pub/Sub messages per broadcast: the events each gateway received per update (its
  ``scorecast_gateway_pubsub_messages`` counter: one per board it follows, however many clients),
  the publishes the servers executed per update (``INFO commandstats``: PUBLISH or SPUBLISH, one
  per board the write changed) and the cluster bus messages they caused (``CLUSTER INFO``).
Everything it starts it stops; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvloop

from bench.common import cpu_split, pct, rss_bytes
from bench.sse_fanout import Fanout, connect_all
from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.cluster import RedisCluster, cluster_ports
from devstack.processes import Proc, Stack
from devstack.servers import ManagedServer, free_port, mongo_server, redis_server

GATEWAYS = 2


async def server_counters(ports: list[int]) -> dict[str, int]:
    """Publish calls over every server, and cluster bus publish messages when clustered."""
    totals = {"publish": 0, "spublish": 0, "bus_publish": 0, "bus_publishshard": 0}
    for port in ports:
        client = aioredis.Redis(port=port, decode_responses=True)
        try:
            stats = await client.info("commandstats")
            for command in ("publish", "spublish"):
                totals[command] += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
            if (await client.info("cluster")).get("cluster_enabled"):
                info = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                totals["bus_publish"] += int(info.get("cluster_stats_messages_publish_sent", 0))
                totals["bus_publishshard"] += int(info.get("cluster_stats_messages_publishshard_sent", 0))
        finally:
            await client.aclose()
    return totals


async def pubsub_received(gateway: Proc) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{gateway.url}/metrics")).text
    found = re.search(r"^scorecast_gateway_pubsub_messages_total (\S+)$", text, re.M)
    if found is None:
        raise SystemExit("the gateway exposes no scorecast_gateway_pubsub_messages_total")
    return float(found.group(1))


async def one_run(mode: str, args: argparse.Namespace, work: Path, mongo: ManagedServer) -> dict[str, Any]:
    cluster: RedisCluster | None = None
    single: ManagedServer | None = None
    if mode == "cluster":
        cluster = RedisCluster(cluster_ports(), work / "cluster").start()
        url, ports = cluster.url, cluster.ports
    else:
        single = redis_server(free_port(), work / "redis").start()
        url, ports = single.url, [single.port]
    settings = Settings(
        redis_url=url,
        redis_cluster=mode == "cluster",
        mongo_url=mongo.url,
        mongo_db=f"bench_{mode}",
        jwt_secret=uuid.uuid4().hex * 2,
        rate_limit_per_s=10_000.0,
        rate_limit_burst=10_000,
        stream_block_ms=50,
        slow_client_timeout_s=30.0,
        dev_login_enabled=True,
    )
    stack = Stack(settings, work)
    try:
        stack.start("ingest.api")
        stack.start("ingest.worker")
        gateways = [stack.start("gateway")] + [stack.start_gateway() for _ in range(GATEWAYS - 1)]
        pids = [g.process.pid for g in gateways if g.process is not None]
        issuer = TokenIssuer(stack.settings)
        token = issuer.access_token(user_id="viewer", name="Viewer", region="EU")
        scorer = issuer.access_token(user_id="points-service", name="Points service", roles=["scorer"])
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=10) as http:
            for user_id in ["climber"] + [f"seed{i}" for i in range(10)]:
                r = await http.post(
                    "/api/v1/auth/login", json={"userId": user_id, "name": user_id, "region": "EU"}
                )
                r.raise_for_status()

            async def write(user_id: str, increment: int) -> float:
                r = await http.post(
                    "/api/v1/scores/update",
                    json={"userId": user_id, "scoreIncrement": increment, "actionId": str(uuid.uuid4())},
                    headers={"authorization": f"Bearer {scorer}"},
                )
                accepted = time.perf_counter()
                r.raise_for_status()
                return accepted

            for i in range(10):
                await write(f"seed{i}", 100 + i)
            for _ in range(100):
                r = await http.get("/api/v1/scores/leaderboard")
                if r.status_code == 200 and len(r.json()["entries"]) == 10:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            rss_before = [rss_bytes(pid) for pid in pids]

            fanout = Fanout()
            per_gateway = args.clients // GATEWAYS
            for gateway in gateways:
                assert gateway.port is not None
                await connect_all(fanout, per_gateway, gateway.port, token)
            clients = per_gateway * GATEWAYS
            if not await fanout.all_at_least(0, timeout_s=120):
                got = sum(1 for c in fanout.clients if c.version >= 0)
                raise SystemExit(f"{mode}: only {got}/{clients} clients got a snapshot")
            await asyncio.sleep(3.0)
            rss_after = [rss_bytes(pid) for pid in pids]

            received_before = [await pubsub_received(g) for g in gateways]
            servers_before = await server_counters(ports)
            cpu_before = [sum(cpu_split(pid)) for pid in pids]
            last_ms: list[float] = []
            median_ms: list[float] = []
            for _ in range(args.updates):
                before = max(c.version for c in fanout.clients)
                accepted = await write("climber", 7)
                if not await fanout.all_at_least(before + 1, timeout_s=30):
                    raise SystemExit(f"{mode}: an update did not reach every client within 30 s")
                arrivals = fanout.arrivals(before, accepted)
                last_ms.append(arrivals[-1] * 1000)
                median_ms.append(arrivals[len(arrivals) // 2] * 1000)
                await asyncio.sleep(stack.settings.broadcast_interval_s + 0.2)
            cpu_s = sum(sum(cpu_split(pid)) - start for pid, start in zip(pids, cpu_before, strict=True))
            servers_after = await server_counters(ports)
            received = [await pubsub_received(g) - b for g, b in zip(gateways, received_before, strict=True)]
            failed = sum(1 for c in fanout.clients if not c.ok or c.closed)
        for client in fanout.clients:
            client.closed = True
        return {
            "clients": clients,
            "failed": failed,
            "cpu_per_delivery_us": cpu_s / (args.updates * clients) * 1e6,
            "rss_per_connection_kib": (sum(rss_after) - sum(rss_before)) / clients / 1024,
            "last": (pct(last_ms, 50), pct(last_ms, 99)),
            "median": (pct(median_ms, 50), pct(median_ms, 99)),
            "received_per_update": [n / args.updates for n in received],
            "publishes_per_update": {
                k: (servers_after[k] - servers_before[k]) / args.updates for k in servers_after
            },
        }
    finally:
        stack.close()
        if cluster is not None:
            cluster.stop()
        if single is not None:
            single.stop()


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="scorecast-bench-cluster-"))
    mongo = mongo_server(free_port(), work / "mongo").start()
    try:
        results = {mode: await one_run(mode, args, work, mongo) for mode in ("redis", "cluster")}
    finally:
        mongo.stop()
    one, many = results["redis"], results["cluster"]
    rows = [
        ("clients (failed)", lambda r: f"{r['clients']} ({r['failed']})"),
        ("gateway CPU per delivered frame", lambda r: f"{r['cpu_per_delivery_us']:.1f} us"),
        ("gateway RSS per connection", lambda r: f"{r['rss_per_connection_kib']:.1f} KiB"),
        ("202 -> last client p50 / p99", lambda r: f"{r['last'][0]:.1f} / {r['last'][1]:.1f} ms"),
        ("202 -> median client p50 / p99", lambda r: f"{r['median'][0]:.1f} / {r['median'][1]:.1f} ms"),
        (
            "events received per gateway per update",
            lambda r: " / ".join(f"{n:.2f}" for n in r["received_per_update"]),
        ),
        (
            "PUBLISH / SPUBLISH per update (servers)",
            lambda r: (
                f"{r['publishes_per_update']['publish']:.2f} / {r['publishes_per_update']['spublish']:.2f}"
            ),
        ),
        (
            "cluster bus publish / publishshard msgs per update",
            lambda r: (
                f"{r['publishes_per_update']['bus_publish']:.2f} / "
                f"{r['publishes_per_update']['bus_publishshard']:.2f}"
            ),
        ),
    ]
    print(f"{'':52} {'one Redis':>22} {'3-master cluster':>22}")
    for label, cell in rows:
        print(f"{label:52} {cell(one):>22} {cell(many):>22}")
    print(
        f"cluster/one ratios: CPU per frame {many['cpu_per_delivery_us'] / one['cpu_per_delivery_us']:.2f}x, "
        f"202->last p50 {many['last'][0] / one['last'][0]:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=2000, help="SSE clients, split over the two gateways")
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    if not 2 <= args.clients <= 20_000 or not 1 <= args.updates <= 200:
        raise SystemExit("--clients 2..20000, --updates 1..200")
    uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
