"""SSE fan-out: N clients on one gateway process while scores flow through the whole stack.

    .venv/bin/python -m bench.sse_fanout --clients 1000 --updates 20
    .venv/bin/python -m bench.sse_fanout --clients 10000 --updates 20

Starts its own embedded Redis and nx-27017 on free ports, the ingest API, one worker and ONE
gateway process, then opens N SSE connections spread over several 127.0.0.x source addresses.
Reports:
- gateway RSS per idle SSE connection: (RSS with N clients - RSS before) / N;
- per update, the time from the ingest API's 202 to the LAST client receiving the new board
  version (p50/p99 over the updates), and to the median client;
- gateway CPU (user + system) spent per broadcast while updates flow.
Updates are spaced further apart than the broadcast interval so each is its own broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
import uvloop

from bench.common import SOURCE_ADDRESSES, Scorer, bench_stack, cpu_split, last_sse_id, pct, rss_bytes


class SseClient(asyncio.Protocol):
    """Reads an endless SSE response and notes when each new board version arrived."""

    def __init__(self, request: bytes, fanout: Fanout) -> None:
        self.request = request
        self.fanout = fanout
        self.version = -1
        self.seen: dict[int, float] = {}
        self.tail = b""
        self.ok = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.ok and data.startswith(b"HTTP/1.1 200"):
            self.ok = True
        version, self.tail = last_sse_id(self.tail, data)
        if version is not None and version != self.version:
            self.version = version
            self.seen[version] = now
            self.fanout.on_version(version)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


class Fanout:
    def __init__(self) -> None:
        self.clients: list[SseClient] = []
        self.waiting: tuple[int, asyncio.Event] | None = None

    def on_version(self, version: int) -> None:
        if self.waiting and version >= self.waiting[0]:
            if all(c.version >= self.waiting[0] for c in self.clients if not c.closed):
                self.waiting[1].set()

    async def all_at_least(self, version: int, timeout_s: float) -> bool:
        event = asyncio.Event()
        self.waiting = (version, event)
        self.on_version(version)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting = None

    def arrivals(self, after_version: int, since: float) -> list[float]:
        """Each open client's delay (s, sorted) from ``since`` to its first version past ``after_version``."""
        return sorted(
            min(t for v, t in c.seen.items() if v > after_version) - since
            for c in self.clients
            if not c.closed
        )


async def connect_all(fanout: Fanout, n: int, port: int, token: str) -> None:
    request = (
        f"GET /api/v1/leaderboard/stream?board=global HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    batch = 500
    for start in range(0, n, batch):
        coros = []
        for i in range(start, min(n, start + batch)):
            client = SseClient(request, fanout)
            fanout.clients.append(client)
            source = SOURCE_ADDRESSES[i % len(SOURCE_ADDRESSES)]
            factory = lambda c=client: c  # noqa: E731
            coros.append(loop.create_connection(factory, "127.0.0.1", port, local_addr=(source, 0)))
        await asyncio.gather(*coros)


async def run(args: argparse.Namespace) -> None:
    async with bench_stack(["ingest.api", "ingest.worker", "gateway"]) as bench:
        stack = bench.stack
        gateway = stack.procs[-1].process
        assert gateway is not None
        token = bench.issuer.access_token(user_id="viewer", name="Viewer", region="EU")
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=10) as http:
            scorer = Scorer(http, bench.issuer)
            await scorer.seed_global()
            await asyncio.sleep(1.0)
            rss_before = rss_bytes(gateway.pid)

            fanout = Fanout()
            t0 = time.perf_counter()
            await connect_all(fanout, args.clients, stack.settings.gateway_port, token)
            if not await fanout.all_at_least(0, timeout_s=120):
                got = sum(1 for c in fanout.clients if c.version >= 0)
                raise SystemExit(f"only {got}/{args.clients} clients got a snapshot")
            connect_s = time.perf_counter() - t0
            await asyncio.sleep(3.0)
            rss_after = rss_bytes(gateway.pid)
            failed = sum(1 for c in fanout.clients if not c.ok or c.closed)

            last_ms: list[float] = []
            median_ms: list[float] = []
            user_start, system_start = cpu_split(gateway.pid)
            for _ in range(args.updates):
                before = max(c.version for c in fanout.clients)
                await scorer.score("climber", 7)
                accepted = time.perf_counter()
                if not await fanout.all_at_least(before + 1, timeout_s=30):
                    raise SystemExit("an update did not reach every client within 30 s")
                arrivals = fanout.arrivals(before, accepted)
                last_ms.append(arrivals[-1] * 1000)
                median_ms.append(arrivals[len(arrivals) // 2] * 1000)
                await asyncio.sleep(stack.settings.broadcast_interval_s + 0.2)
            user_end, system_end = cpu_split(gateway.pid)
            user_s, system_s = user_end - user_start, system_end - system_start
            cpu_used = user_s + system_s
            idle_s = args.updates * (stack.settings.broadcast_interval_s + 0.2)
        print(f"clients          {args.clients} (failed {failed}), connected in {connect_s:.1f} s")
        print(f"gateway RSS before / after {rss_before / 2**20:.1f} MiB / {rss_after / 2**20:.1f} MiB")
        print(f"RSS per SSE connection {(rss_after - rss_before) / args.clients / 1024:.1f} KiB")
        print(f"accepted -> last client p50 {pct(last_ms, 50):.1f} ms  p99 {pct(last_ms, 99):.1f} ms")
        print(f"accepted -> median client p50 {pct(median_ms, 50):.1f} ms  p99 {pct(median_ms, 99):.1f} ms")
        print(
            f"gateway CPU per broadcast {cpu_used / args.updates * 1000:.1f} ms "
            f"({cpu_used:.2f} s over {args.updates} updates in ~{idle_s:.0f} s, incl. idle ticks; "
            f"user {user_s / args.updates * 1000:.1f} ms, system {system_s / args.updates * 1000:.1f} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
