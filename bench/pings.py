"""Autosave pings over WebSocket at the real cadence: gateway CPU per ping and ack latency.

    .venv/bin/python -m bench.pings --rates 2000 5000 10000 --window-players 200

Starts its own Redis and nx-27017, the ingest API (the course is written through it) and ONE
gateway process. For each offered rate R: R players (distinct users, one WebSocket each, spread
over 127.0.0.x source addresses, connected before the clock starts) ping once per second each,
phases spread evenly over the second: R pings/s offered, open loop (after one warm-up ping each,
not measured: a player's first ping loads its progress from MongoDB). Each player has ONE ping in
flight: a ping due while the last is unanswered goes out when its ack comes, and its latency
counts from when it was due, so a gateway that falls behind shows in the p99 rather than
slowing the offered load. Then the batched figure: ``--window-players`` players each keeping
``--window`` pings in flight (closed loop), ack latency from each ping's send.
Gateway CPU per ping = the gateway's user + system CPU over the phase / acks.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
import uvloop

from bench.common import BenchStack, bench_stack, cpu_seconds, pct, raise_nofile_limit, settle
from bench.loadgen import LoadGen
from bench.progress_bench import COURSE


async def phase(
    bench: BenchStack, gen: LoadGen, pid: int, players: int, args: argparse.Namespace, window: int
) -> dict[str, Any]:
    issuer = bench.issuer
    tokens = [issuer.access_token(user_id=f"p{window}-{i}", name=f"P{i}") for i in range(players)]
    port = bench.settings.gateway_port
    answers = await gen.connect("ws", port, tokens, subscribe=False, batch=500, timeout_s=120)
    never = sum(a["never"] for a in answers)
    # Warm-up, not measured: each player's first ping loads its progress from MongoDB into Redis
    # (a player who has been watching for a while pings a warm key).
    await gen.all(op="pings_window", window=1, start=time.monotonic(), seconds=0)
    await settle(pid)
    start = time.monotonic() + 0.5
    redis_pid = bench.redis.process.pid if bench.redis.process else pid
    cpu0, redis_cpu0 = cpu_seconds(pid), cpu_seconds(redis_pid)
    gen_cpu0 = sum(cpu_seconds(p) for p in gen.pids)
    if window == 1:
        got = await gen.all(op="pings_open", period_s=1.0, start=start, seconds=args.seconds, total=players)
    else:
        got = await gen.all(op="pings_window", window=window, start=start, seconds=args.seconds)
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(pid) - cpu0
    redis_cpu = cpu_seconds(redis_pid) - redis_cpu0
    gen_cpu = sum(cpu_seconds(p) for p in gen.pids) - gen_cpu0
    await gen.all(op="close")
    latencies = [t for a in got for t in a["latencies"]]
    acks = len(latencies)
    return {
        "players": players - never,
        "not_connected": never,
        "window": window,
        "offered_per_s": players if window == 1 else None,
        "acked_per_s": acks / args.seconds,
        "cpu_us": cpu / max(acks, 1) * 1e6,
        "gateway_core": cpu / elapsed,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "skipped": sum(a.get("skipped", 0) for a in got),
        "late_p99_ms": pct([t for a in got for t in a.get("late", [])], 99) * 1000,
        "unanswered": sum(a.get("unanswered", 0) for a in got),
        "errors": sum(a["errors"] for a in got),
        "error_sample": [s for a in got for s in a["error_sample"]][:3],
        "loadgen_core": gen_cpu / elapsed,
        "redis_core": redis_cpu / elapsed,
    }


def show(r: dict[str, Any]) -> None:
    what = (
        f"{r['players']:,} players (not connected: {r['not_connected']}), 1 ping/s each, open loop"
        if r["window"] == 1
        else f"{r['players']:,} players x window {r['window']}, closed loop"
    )
    print(
        f"{what}: {r['acked_per_s']:,.0f} acks/s, gateway CPU {r['cpu_us']:.1f} us/ping "
        f"({r['gateway_core'] * 100:.0f} % of a core), "
        f"ack p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; "
        f"generator late p99 {r['late_p99_ms']:.1f} ms, "
        f"skipped {r['skipped']}, unanswered {r['unanswered']}, errors {r['errors']} {r['error_sample']}; "
        f"load generator {r['loadgen_core'] * 100:.0f} %, Redis {r['redis_core'] * 100:.0f} % of a core",
        flush=True,
    )


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_nofile_limit()
    results = []
    window = {} if args.batch_window_ms is None else {"ping_batch_window_ms": args.batch_window_ms}
    async with bench_stack(["ingest.api", "gateway"], **window) as bench:
        gateway = bench.stack.procs[-1].process
        assert gateway is not None
        admin = bench.issuer.access_token(user_id="root", name="Root", roles=["admin"])
        async with httpx.AsyncClient(base_url=bench.stack.ingest_url, timeout=30) as http:
            r = await http.put(
                "/api/v1/courses/bench", json=COURSE, headers={"authorization": f"Bearer {admin}"}
            )
            r.raise_for_status()
        gen = await LoadGen.start(args.procs)
        try:
            for rate in args.rates:
                results.append(await phase(bench, gen, gateway.pid, rate, args, 1))
                show(results[-1])
            if args.window_players:
                results.append(await phase(bench, gen, gateway.pid, args.window_players, args, args.window))
                show(results[-1])
        finally:
            await gen.close()
    if args.json:
        print("JSON " + json.dumps(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=int, nargs="*", default=[2000], help="pings/s offered (= players)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--window", type=int, default=8, help="pings in flight per player, batched phase")
    parser.add_argument("--window-players", type=int, default=200, help="0: no batched phase")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--batch-window-ms", type=float, default=None, help="PING_BATCH_WINDOW_MS of the gateway"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
