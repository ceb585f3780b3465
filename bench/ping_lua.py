"""Redis time per autosave ping: the Lua step alone, as Redis itself measures it.

    .venv/bin/python -m bench.ping_lua --users 200 --rounds 60

Starts an embedded Redis on a free port; ``--users`` learners each play one lecture at 1x and
ping every 5 s of playback (``--rounds`` pings each, 50 per pipelined batch, the wall-clock time
of each batch given to the store as a real player's would be). Prints ``usec_per_call`` of
EVALSHA from ``INFO commandstats``: the Redis CPU one ping costs, without the network or the
gateway. Run it from another checkout (same virtualenv) to compare versions.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from contract.progress import Ping
from devstack.servers import free_port, redis_server
from store.clients import redis_client
from store.progress import ProgressStore

T0_MS = 1_700_000_000_000


async def run(users: int, rounds: int) -> float:
    server = redis_server(free_port(), Path(tempfile.mkdtemp(prefix="ping-lua-"))).start()
    redis = redis_client(server.url)
    try:
        store = ProgressStore(redis, complete_threshold=0.95, ttl_s=3600)
        for n in range(rounds):
            pings = [
                Ping(f"u{u}", "c1", "l1", 5.0 * n, n + 1, 5.0 * rounds + 60, origin=f"ws-{u}")
                for u in range(users)
            ]
            for i in range(0, users, 50):
                await store.save(pings[i : i + 50], T0_MS + n * 5000)
        stats = await redis.info("commandstats")
        return float(stats["cmdstat_evalsha"]["usec_per_call"])
    finally:
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ping_lua", description=__doc__)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    usec = asyncio.run(run(args.users, args.rounds))
    print(f"{args.users * args.rounds} pings: {usec:.1f} us of Redis per ping (EVALSHA usec_per_call)")


if __name__ == "__main__":
    main()
