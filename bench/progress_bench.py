"""Autosave pings: what one gateway process absorbs, what reaches MongoDB, how fast resume reads are.

    .venv/bin/python -m bench.progress_bench --connections 400 --seconds 10

Starts embedded Redis and nx-27017 on free ports, the ingest API and ONE gateway process, and
a course of 3 lectures. Then:
1. pings/s: ``--connections`` WebSockets (spread over several 127.0.0.x source addresses), each
   keeping ``--window`` pings in flight, for ``--seconds``; counts acks;
2. MongoDB writes per 1,000 pings over one flush cycle: every connection's user sends 60 pings
   (5 minutes of playback at one ping per 5 s, the default FLUSH_INTERVAL_S), then one flush;
3. resume read latency: ``GET /api/v1/progress/{courseId}`` p50/p99 with ``--readers`` concurrent readers
   (closed loop), or at ``--read-rate`` reads per second (open loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvloop
from pymongo import AsyncMongoClient
from websockets.asyncio.client import ClientConnection, connect

from bench.common import SOURCE_ADDRESSES, bench_stack, cpu_seconds, pct
from contract.auth import TokenIssuer
from devstack.processes import Stack
from ingest.flusher import Flusher

COURSE = {
    "title": "Bench course",
    "sections": [
        {
            "sectionId": "s",
            "title": "S",
            "lectures": [
                {"lectureId": f"l{i}", "title": f"L{i}", "durationSeconds": 80000, "marks": 1}
                for i in range(3)
            ],
        }
    ],
}


async def pinger(
    ws: ClientConnection, window: int, deadline: float, counts: list[int], start_seq: int
) -> None:
    seq = start_seq
    in_flight = 0
    while True:
        while in_flight < window and time.perf_counter() < deadline:
            seq += 1
            ping = {
                "type": "progress",
                "courseId": "bench",
                "lectureId": "l1",
                "position": seq % 70000,
                "seq": seq,
            }
            await ws.send(json.dumps(ping))
            in_flight += 1
        if in_flight == 0:
            return
        message = json.loads(await ws.recv())
        if message["type"] == "ack":
            counts[0] += 1
            in_flight -= 1
        elif message["type"] == "error":
            raise RuntimeError(message)


async def one_ping(ws: ClientConnection, seq: int, counts: list[int]) -> None:
    ping = {"type": "progress", "courseId": "bench", "lectureId": "l2", "position": seq % 70000, "seq": seq}
    await ws.send(json.dumps(ping))
    while json.loads(await ws.recv())["type"] != "ack":
        pass
    counts[0] += 1


async def open_sockets(stack: Stack, tokens: list[str]) -> list[ClientConnection]:
    base = stack.gateway_url.replace("http://", "ws://") + "/api/v1/ws?access_token="
    sockets = []
    for i, token in enumerate(tokens):
        source = SOURCE_ADDRESSES[i % len(SOURCE_ADDRESSES)]
        sockets.append(await connect(base + token, compression=None, local_addr=(source, 0)))
    return sockets


class KeepAliveGet:
    """A bare HTTP/1.1 keep-alive GET client: the load generator shares the two cores with the
    servers, and httpx spends about 2 ms of CPU per request here (more than the ingest API spends
    answering it), which would make the reads measure the client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, source: str) -> KeepAliveGet:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port), local_addr=(source, 0)))

    async def get(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"GET answered {status.decode()}: {body[:200]!r}")
        return body

    def close(self) -> None:
        self.writer.close()


def get_request(path: str, token: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\r\n".encode()


async def run(args: argparse.Namespace) -> None:
    async with bench_stack(["ingest.api", "gateway"]) as bench:
        await measure(bench.stack, bench.redis.process.pid if bench.redis.process else 0, args)


async def measure(stack: Stack, redis_pid: int, args: argparse.Namespace) -> None:
    settings = stack.settings
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        gateway = stack.procs[-1].process
        assert gateway is not None
        issuer = TokenIssuer(stack.settings)
        admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
        async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
            r = await http.put(
                "/api/v1/courses/bench", json=COURSE, headers={"authorization": f"Bearer {admin}"}
            )
            r.raise_for_status()
            tokens = [issuer.access_token(user_id=f"u{i}", name=f"U{i}") for i in range(args.connections)]
            sockets = await open_sockets(stack, tokens)

            # 1. Throughput.
            counts = [0]
            others = (redis_pid, os.getpid())
            cpu0, t0 = cpu_seconds(gateway.pid), time.perf_counter()
            others0 = [cpu_seconds(pid) for pid in others]
            deadline = t0 + args.seconds
            await asyncio.gather(*(pinger(ws, args.window, deadline, counts, 0) for ws in sockets))
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(gateway.pid) - cpu0
            redis_cpu, client_cpu = (cpu_seconds(pid) - c0 for pid, c0 in zip(others, others0, strict=True))
            pings_per_s = counts[0] / elapsed

            # 2. MongoDB writes per 1,000 pings over one flush cycle.
            await redis.delete("progress:dirty")
            await mongo.bench.progress.delete_many({})
            cycle = [0]
            for n in range(60):
                await asyncio.gather(*(one_ping(ws, 10**9 + n, cycle) for ws in sockets))
            flusher = Flusher(redis=redis, db=mongo.bench, settings=settings)
            flushed = await flusher.flush_once()
            writes_per_1000 = flusher.writes / cycle[0] * 1000

            # 3. Resume reads.
            latencies: list[float] = []

            requests = [get_request("/api/v1/progress/bench", token) for token in tokens]

            async def reader(k: int) -> None:
                """Closed loop: the next read as soon as the last one is answered."""
                source = SOURCE_ADDRESSES[k % len(SOURCE_ADDRESSES)]
                client = await KeepAliveGet.open(stack.ingest_url, source)
                for i in range(args.reads // args.readers):
                    t = time.perf_counter()
                    await client.get(requests[(k * 7919 + i) % len(requests)])
                    latencies.append((time.perf_counter() - t) * 1000)
                client.close()

            async def open_loop(rate: float) -> None:
                """Reads arrive at ``rate`` per second (Poisson) whether or not earlier ones are
                answered; each is timed from its arrival, so a wait for a free connection counts."""
                idle: asyncio.Queue[KeepAliveGet] = asyncio.Queue()
                for k in range(32):
                    source = SOURCE_ADDRESSES[k % len(SOURCE_ADDRESSES)]
                    client = await KeepAliveGet.open(stack.ingest_url, source)
                    await client.get(requests[k])  # not timed: the connection's first request
                    idle.put_nowait(client)

                async def one(i: int, arrival: float) -> None:
                    client = await idle.get()
                    await client.get(requests[i * 7919 % len(requests)])
                    latencies.append((time.perf_counter() - arrival) * 1000)
                    idle.put_nowait(client)

                pacing = random.Random(7)
                arrival, tasks = time.perf_counter(), []
                for i in range(args.reads):
                    arrival += pacing.expovariate(rate)
                    await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
                    tasks.append(asyncio.create_task(one(i, arrival)))
                await asyncio.gather(*tasks)
                while not idle.empty():
                    idle.get_nowait().close()

            if args.read_rate:
                await open_loop(args.read_rate)
            else:
                await asyncio.gather(*(reader(k) for k in range(args.readers)))
            for ws in sockets:
                await ws.close()
        print(f"connections {args.connections}, window {args.window}, {args.seconds} s")
        print(f"pings acked per second   {pings_per_s:,.0f} ({counts[0]:,} in {elapsed:.1f} s)")
        print(f"gateway CPU              {cpu:.2f} s = {cpu / elapsed * 100:.0f} % of one core")
        print(f"gateway CPU per ping     {cpu / max(counts[0], 1) * 1e6:.1f} us")
        print(
            f"same phase: Redis {redis_cpu / elapsed * 100:.0f} %, "
            f"load generator {client_cpu / elapsed * 100:.0f} % of one core"
        )
        print(f"flush cycle     {cycle[0]:,} pings on {flushed} keys -> {flusher.writes} MongoDB writes")
        print(
            f"MongoDB writes {writes_per_1000:.1f} per 1,000 pings ({100 - writes_per_1000 / 10:.1f} % fewer)"
        )
        p50, p99 = pct(latencies, 50), pct(latencies, 99)
        how = f"{args.read_rate:g}/s offered" if args.read_rate else f"{args.readers} readers"
        print(f"resume read ({how}) p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    finally:
        await redis.aclose()
        await mongo.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--readers", type=int, default=8, help="concurrent resume readers")
    parser.add_argument(
        "--read-rate", type=float, default=0.0, help="resume reads per second, open loop (not --readers)"
    )
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
