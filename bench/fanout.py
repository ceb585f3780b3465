"""Board fan-out, SSE and WebSocket side by side in one run, through the whole stack.

    .venv/bin/python -m bench.fanout --clients 1000
    .venv/bin/python -m bench.fanout --clients 10000

Starts its own Redis and nx-27017, the ingest API and one worker; then, for each transport in
turn, a fresh gateway process, N clients of the ``global`` board (SSE: the stream; WebSocket:
``subscribe``), all from the same load generator (``--procs`` processes, clients spread over
127.0.0.x source addresses). Each of ``--updates`` score writes is its own broadcast of the top 10
(spaced past ``BROADCAST_INTERVAL_S``). Per transport:
- gateway RSS per idle connection: (RSS with N clients - RSS before) / N;
- gateway CPU (user + system) per delivery: the CPU over the update phase / (updates x N);
- score accepted (the ingest API's 202) -> client, p50 and p99 over every delivery, and p50 of
  the last client of each update.
Every client uses one viewer's token (``--distinct-users``: one user each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import uvloop

from bench.common import (
    BenchStack,
    Scorer,
    bench_stack,
    cpu_split,
    pct,
    raise_nofile_limit,
    rss_bytes,
    settle,
)
from bench.loadgen import LoadGen


async def one_transport(
    transport: str,
    bench: BenchStack,
    scorer: Scorer,
    gen: LoadGen,
    tokens: list[str],
    args: argparse.Namespace,
) -> dict[str, float]:
    gateway = bench.stack.start_gateway()
    assert gateway.process is not None and gateway.port is not None
    pid, n = gateway.process.pid, len(tokens)
    try:
        await asyncio.sleep(1.0)
        rss_before = rss_bytes(pid)
        t0 = time.monotonic()
        answers = await gen.connect(transport, gateway.port, tokens, batch=500, timeout_s=120)
        never = sum(a["never"] for a in answers)
        if never:
            raise SystemExit(
                f"{transport}: {never}/{n} clients got no snapshot: {answers[0]['error_sample']}"
            )
        connect_s = time.monotonic() - t0
        await settle(pid)
        await asyncio.sleep(1.0)
        rss_after = rss_bytes(pid)
        version = max(a["version"] for a in answers)

        deliveries: list[float] = []
        last: list[float] = []
        gen_cpu0 = sum(sum(cpu_split(p)) for p in gen.pids)
        user0, system0 = cpu_split(pid)
        for _ in range(args.updates):
            await scorer.score("climber", 7)
            accepted = time.monotonic()
            got = await gen.all(op="wait", version=version + 1, timeout_s=60)
            if missing := sum(a["missing"] for a in got):
                raise SystemExit(f"{transport}: an update did not reach {missing} clients within 60 s")
            arrivals = [t - accepted for a in got for t in a["arrivals"]]
            deliveries.extend(arrivals)
            last.append(max(arrivals))
            version += 1
            # Past the board's throttle: the next write is a broadcast of its own.
            await asyncio.sleep(bench.settings.broadcast_interval_s + 0.2)
        user1, system1 = cpu_split(pid)
        gen_cpu = sum(sum(cpu_split(p)) for p in gen.pids) - gen_cpu0
        await gen.all(op="close")
    finally:
        gateway.kill()
    cpu = (user1 - user0) + (system1 - system0)
    return {
        "clients": n,
        "connect_s": connect_s,
        "rss_kib": (rss_after - rss_before) / n / 1024,
        "cpu_us": cpu / (args.updates * n) * 1e6,
        "user_us": (user1 - user0) / (args.updates * n) * 1e6,
        "system_us": (system1 - system0) / (args.updates * n) * 1e6,
        "p50_ms": pct(deliveries, 50) * 1000,
        "p99_ms": pct(deliveries, 99) * 1000,
        "last_p50_ms": pct(last, 50) * 1000,
        "loadgen_cpu_us": gen_cpu / (args.updates * n) * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    raise_nofile_limit()
    results: dict[str, dict[str, float]] = {}
    async with bench_stack(["ingest.api", "ingest.worker"]) as bench:
        issuer = bench.issuer
        gen = await LoadGen.start(args.procs)
        try:
            async with httpx.AsyncClient(base_url=bench.stack.ingest_url, timeout=10) as http:
                scorer = Scorer(http, issuer)
                await scorer.seed_global()
                if args.distinct_users:
                    tokens = [
                        issuer.access_token(user_id=f"v{i}", name=f"V{i}", region="EU")
                        for i in range(args.clients)
                    ]
                else:
                    tokens = [
                        issuer.access_token(user_id="viewer", name="Viewer", region="EU")
                    ] * args.clients
                for transport in args.transports:
                    results[transport] = await one_transport(transport, bench, scorer, gen, tokens, args)
                    show(transport, results[transport])
        finally:
            await gen.close()
    if "sse" in results and "ws" in results:
        sse, ws = results["sse"], results["ws"]
        print(
            f"WebSocket / SSE: RSS {ws['rss_kib'] / sse['rss_kib']:.2f}x, CPU per delivery "
            f"{ws['cpu_us'] / sse['cpu_us']:.2f}x, p50 {ws['p50_ms'] / sse['p50_ms']:.2f}x, "
            f"p99 {ws['p99_ms'] / sse['p99_ms']:.2f}x"
        )
    if args.json:
        print("JSON " + json.dumps(results))
    return results


def show(transport: str, r: dict[str, float]) -> None:
    print(
        f"{transport:4} {r['clients']:.0f} clients (connected in {r['connect_s']:.1f} s): "
        f"RSS {r['rss_kib']:.1f} KiB/conn, CPU {r['cpu_us']:.1f} us/delivery "
        f"(user {r['user_us']:.1f}, system {r['system_us']:.1f}), accepted -> client "
        f"p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms, last client p50 {r['last_p50_ms']:.0f} ms; "
        f"load generator {r['loadgen_cpu_us']:.1f} us/delivery",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--transports", nargs="+", default=["sse", "ws"], choices=["sse", "ws"])
    parser.add_argument("--distinct-users", action="store_true", help="one user (token) per client")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
