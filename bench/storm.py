"""Reconnect storm: N clients connecting at once to one gateway process, SSE and WebSocket.

    .venv/bin/python -m bench.storm --clients 10000

Starts its own Redis and nx-27017, the ingest API, one worker and a full ``global`` board; then,
for each transport in turn, a fresh gateway process and N clients (distinct users, each its own
token, spread over 127.0.0.x source addresses) that all connect at the same moment — what a
drained neighbour's clients ask of the gateways that remain. A WebSocket client is in when it
got the ``leaderboard`` snapshot answering its ``subscribe`` (handshake and token check on the
way; answered ``unavailable``, it asks again a second later, as the page does); an SSE client
when it got the ``snapshot`` event. Reports the time from the start until half and until all
of them were in, and how many never got in within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import uvloop

from bench.common import BenchStack, Scorer, bench_stack, cpu_seconds, pct, raise_nofile_limit, settle
from bench.loadgen import LoadGen


async def storm(transport: str, bench: BenchStack, gen: LoadGen, args: argparse.Namespace) -> dict[str, Any]:
    issuer = bench.issuer
    tokens = [issuer.access_token(user_id=f"{transport}{i}", name=f"S{i}") for i in range(args.clients)]
    gateway = bench.stack.start_gateway()
    assert gateway.process is not None and gateway.port is not None
    try:
        await settle(gateway.process.pid)
        cpu0 = cpu_seconds(gateway.process.pid)
        answers = await gen.connect(transport, gateway.port, tokens, batch=0, timeout_s=args.timeout)
        cpu = cpu_seconds(gateway.process.pid) - cpu0
        await gen.all(op="close")
    finally:
        gateway.kill()
    started = min(a["started"] for a in answers)
    times = sorted(t - started for a in answers for t in a["in_times"])
    return {
        "transport": transport,
        "clients": args.clients,
        "in": len(times),
        "never": sum(a["never"] for a in answers),
        "connect_failures": sum(a["connect_failures"] for a in answers),
        "retries": sum(a["retries"] for a in answers),
        "half_s": pct(times, 50),
        "all_s": times[-1] if len(times) == args.clients else float("inf"),
        "last_s": times[-1] if times else float("nan"),
        "gateway_cpu_s": cpu,
        "error_sample": [s for a in answers for s in a["error_sample"]][:3],
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_nofile_limit()
    results = []
    async with bench_stack(["ingest.api", "ingest.worker"]) as bench:
        async with httpx.AsyncClient(base_url=bench.stack.ingest_url, timeout=10) as http:
            await Scorer(http, bench.issuer).seed_global()
        gen = await LoadGen.start(args.procs)
        try:
            for transport in args.transports:
                r = await storm(transport, bench, gen, args)
                results.append(r)
                print(
                    f"{transport:4} {r['clients']:,} at once: half in {r['half_s']:.2f} s, "
                    f"all in {r['all_s']:.2f} s (last {r['last_s']:.2f} s); never in {r['never']} "
                    f"(within {args.timeout:g} s; {r['connect_failures']} connects failed, "
                    f"{r['retries']} subscribes sent again after `unavailable`) "
                    f"gateway CPU {r['gateway_cpu_s']:.1f} s {r['error_sample']}",
                    flush=True,
                )
        finally:
            await gen.close()
    if args.json:
        print("JSON " + json.dumps(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a client may take to get in")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--transports", nargs="+", default=["sse", "ws"], choices=["sse", "ws"])
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
