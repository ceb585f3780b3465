"""Rank events at scale: N viewers, each its own user, on one gateway while scores flow.

    .venv/bin/python -m bench.rank_bench --viewers 10000 --seconds 20 --rate 20

Starts its own embedded Redis and nx-27017 on free ports, the ingest API and one worker, seeds
the global board with every viewer (random scores) and their profiles, then runs two phases
against ONE gateway process each, identical but for ``RANK_LOOKUPS_PER_S`` (0: rank events off,
then the default): the viewers' SSE streams are opened by ``--generators`` load-generator
processes of this module (``--generate``), spread over 127.0.0.x source addresses, each bounded
in connections and time (it exits on its own after its deadline); a few probe viewers are held by
this process. While the phase's window runs, ``--rate`` score writes per second go to random
viewers through the ingest API, and the probes are scored one after another. Reports per phase:

- Redis commands per second (``INFO commandstats`` delta over the window; commands run inside
  scripts included) and the rank script's calls per second; the difference between the phases is
  what rank events cost;
- gateway CPU (user + system) over the window, and the broadcast's mean time (the shared frame);
- rank lookups and rank events per second (the gateway's /metrics);
- with ranks on: the time from a probe's score write answered 202 to that viewer's own rank
  event showing the new score (p50/p99), split at the board event naming the viewer (this
  process follows the board's Pub/Sub channel): ingest and worker before it, the gateway after.
  A probe waits a random 0.2-0.7 s before its next write, so its writes do not fall into step
  with the gateway's rank ticks;
- with ranks on: for ``--watchers`` viewers held by this process and never scored (only others'
  scores move them), the time from the board event after which their true place changed (from
  a copy of the board kept here, ``bench.rank_mirror``) to their rank event of that version or
  a newer one (p50/p99/max; the goal is 5 s), and the changes never delivered. The bench's own
  reads for that copy are left out of the Redis figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvloop

from bench.common import cpu_split
from bench.rank_mirror import BoardMirror, TruePlace
from contract import keys
from contract.auth import TokenIssuer
from contract.events import board_event_decoder
from contract.settings import Settings
from devstack.processes import ROOT, Stack
from devstack.servers import free_port, mongo_server, redis_server
from store.board_results import Profile
from store.boards import BoardStore

SOURCE_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 18)]
RANK_EVENT = b"event: rank\ndata: "


def viewer_id(i: int) -> str:
    return f"v{i:05d}"


class Stream(asyncio.Protocol):
    """An SSE stream that counts board frames and rank events and keeps the newest rank data."""

    def __init__(self, request: bytes, *, keep_log: bool = False) -> None:
        self.request = request
        # (version, arrival) of every rank event, for the streams this process measures.
        self.log: list[tuple[int, float]] | None = [] if keep_log else None
        self.ok = False
        self.closed = False
        self.frames = 0
        self.ranks = 0
        self.buf = b""
        self.rank: dict[str, Any] | None = None
        self.rank_at = 0.0
        self.frame_times: list[float] = []
        self.changed = asyncio.Event()
        self.first_frame = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.ok and data.startswith(b"HTTP/1.1 200"):
            self.ok = True
        self.buf += data
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                break
            event, self.buf = self.buf[:end], self.buf[end + 2 :]
            at = event.find(RANK_EVENT)
            if at >= 0:
                self.ranks += 1
                self.rank = json.loads(event[at + len(RANK_EVENT) :].split(b"\r\n")[0])
                self.rank_at = time.perf_counter()
                if self.log is not None:
                    self.log.append((self.rank["version"], self.rank_at))
                self.changed.set()
            elif b"event: snapshot" in event or b"event: update" in event:
                self.frames += 1
                self.frame_times.append(time.perf_counter())
                self.changed.set()
                self.first_frame.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


async def open_streams(
    port: int, tokens: list[str], first_source: int, *, keep_log: bool = False
) -> list[Stream]:
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    for start in range(0, len(tokens), 500):
        coros = []
        for i in range(start, min(len(tokens), start + 500)):
            request = (
                f"GET /api/v1/leaderboard/stream?board=global HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {tokens[i]}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
            stream = Stream(request, keep_log=keep_log)
            streams.append(stream)
            source = SOURCE_ADDRESSES[(first_source + i) % len(SOURCE_ADDRESSES)]
            coros.append(
                loop.create_connection(lambda s=stream: s, "127.0.0.1", port, local_addr=(source, 0))
            )
        await asyncio.gather(*coros)
    return streams


# ---------------------------------------------------------------- a load-generator process
async def generate(args: argparse.Namespace) -> None:
    """Hold viewers first..first+count for ``--seconds`` after all got their snapshot, then exit."""
    issuer = TokenIssuer(Settings(jwt_secret=args.secret))
    tokens = [
        issuer.access_token(user_id=viewer_id(i), name=viewer_id(i), region="EU")
        for i in range(args.first, args.first + args.count)
    ]
    deadline = time.monotonic() + args.seconds + 120  # a hard bound, whatever happens
    streams = await open_streams(args.port, tokens, args.first)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.first_frame.wait() for s in streams)), args.seconds + 120)
    print(json.dumps({"ready": sum(1 for s in streams if s.frames)}), flush=True)
    await asyncio.sleep(min(args.seconds, max(0.0, deadline - time.monotonic())))
    summary = {
        "streams": len(streams),
        "failed": sum(1 for s in streams if not s.ok or s.closed),
        "rank_events": sum(s.ranks for s in streams),
        "frames": sum(s.frames for s in streams),
    }
    print(json.dumps(summary), flush=True)


# ---------------------------------------------------------------- the bench itself
async def gateway_metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def redis_calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def phase(
    args: argparse.Namespace,
    stack: Stack,
    redis: aioredis.Redis,
    scorer: str,
    totals: dict[str, int],
    *,
    ranks_on: bool,
) -> dict[str, Any]:
    settings = stack.settings
    proc = stack.start("gateway", rank_lookups_per_s=settings.rank_lookups_per_s if ranks_on else 0.0)
    gateway = proc.process
    assert gateway is not None
    port = settings.gateway_port
    probes = list(range(args.probes))
    watchers = [viewer_id(i) for i in range(args.probes, args.probes + args.watchers)]
    first_held = args.probes + args.watchers
    held = args.viewers - first_held
    per = -(-held // args.generators)
    gens = [
        await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "bench.rank_bench", "--generate", "--port", str(port)],
            *["--secret", settings.jwt_secret, "--first", str(first_held + g * per)],
            *["--count", str(min(per, held - g * per)), "--seconds", str(args.seconds + 15)],
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for g in range(args.generators)
    ]
    result: dict[str, Any] = {"ranks": "on" if ranks_on else "off"}
    try:
        issuer = TokenIssuer(settings)
        probe_streams = await open_streams(
            port,
            [issuer.access_token(user_id=viewer_id(i), name=viewer_id(i)) for i in range(first_held)],
            0,
            keep_log=True,
        )
        for g in gens:
            assert g.stdout is not None
            line = await asyncio.wait_for(g.stdout.readline(), 180)
            if not line or json.loads(line)["ready"] == 0:
                raise SystemExit(f"a load generator did not get ready: {line!r}")
        await asyncio.sleep(3.0)  # the first lookups of every viewer settle
        async with (
            httpx.AsyncClient(base_url=stack.ingest_url, timeout=10) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as gw,
        ):
            lookups0 = await gateway_metric(gw, "scorecast_gateway_rank_lookups_total")
            frames0 = await gateway_metric(gw, "scorecast_gateway_rank_frames_total")
            tsum0 = await gateway_metric(gw, "scorecast_gateway_rank_tick_seconds_sum")
            tcount0 = await gateway_metric(gw, "scorecast_gateway_rank_tick_seconds_count")
            bsum0 = await gateway_metric(gw, "scorecast_gateway_broadcast_seconds_sum")
            bcount0 = await gateway_metric(gw, "scorecast_gateway_broadcast_seconds_count")
            own0 = await gateway_metric(gw, "scorecast_gateway_rank_own_lookups_total")
            osum0 = await gateway_metric(gw, "scorecast_gateway_rank_own_seconds_sum")
            ocount0 = await gateway_metric(gw, "scorecast_gateway_rank_own_seconds_count")
            calls0 = await redis_calls(redis)
            cpu0 = sum(cpu_split(gateway.pid))
            t0 = time.perf_counter()
            end = t0 + args.seconds
            latencies: list[float] = []
            to_event: list[float] = []
            event_to_rank: list[float] = []
            event_to_frames: list[tuple[str, float]] = []  # (user, event time): see below
            applied: dict[str, float] = {}  # probe user -> when its board event was published
            missed = 0
            written = [0]
            pubsub = redis.pubsub()
            await pubsub.subscribe(keys.board_channel("global"))
            watched = {viewer_id(i) for i in probes}
            # The watchers' true places: after the subscription, so no event is missed.
            mirror = BoardMirror(redis, "global")
            await mirror.load()
            events: asyncio.Queue[tuple[float, int, list[str]]] = asyncio.Queue()
            true_place: dict[str, TruePlace] = {w: mirror.place(w) for w in watchers}
            # Per watcher: (board version, board event time) of each change of its true place.
            moves: dict[str, list[tuple[int, float]]] = {w: [] for w in watchers}

            async def listen() -> None:
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        now = time.perf_counter()
                        event = board_event_decoder.decode(message["data"])
                        for user in event.users:
                            if user in watched:
                                applied[user] = now
                        events.put_nowait((now, event.version, event.users))

            async def follow_mirror() -> None:
                while True:
                    at, version, users = await events.get()
                    await mirror.apply(version, users)
                    for w in watchers:
                        now_place = mirror.place(w)
                        if now_place != true_place[w]:
                            true_place[w] = now_place
                            moves[w].append((mirror.version, at))
                    events.task_done()

            async def write(user: str, increment: int) -> float:
                r = await api.post(
                    "/api/v1/scores/update",
                    json={"userId": user, "scoreIncrement": increment, "actionId": str(uuid.uuid4())},
                    headers={"authorization": f"Bearer {scorer}"},
                )
                accepted = time.perf_counter()
                r.raise_for_status()
                totals[user] += increment
                written[0] += 1
                return accepted

            async def flow() -> None:
                # On a fixed schedule (at most 32 writes in flight), so both phases write alike
                # however slowly the API answers.
                rng = random.Random(7)
                in_flight = asyncio.Semaphore(32)
                tasks = []

                async def one(user: str, increment: int) -> None:
                    async with in_flight:
                        await write(user, increment)

                step = 1 / args.rate
                at = time.perf_counter()
                while at < end:
                    user = viewer_id(rng.randrange(first_held, args.viewers))
                    tasks.append(asyncio.create_task(one(user, rng.randint(1, 500))))
                    at += step
                    await asyncio.sleep(max(0.0, at - time.perf_counter()))
                await asyncio.gather(*tasks)

            async def probe(lane: int) -> None:
                nonlocal missed
                mine = probes[lane :: args.lanes]
                pause = random.Random(lane)
                n = 0
                while time.perf_counter() < end - 2:
                    i = mine[n % len(mine)]
                    n += 1
                    stream, user = probe_streams[i], viewer_id(i)
                    stream.changed.clear()
                    applied.pop(user, None)
                    accepted = await write(user, 1 + n % 50)
                    if not ranks_on:  # the same writes, nothing to wait for
                        await asyncio.sleep(0.25)
                        continue
                    want = totals[user]
                    deadline = accepted + 10
                    while not (stream.rank and stream.rank["score"] == want):
                        left = deadline - time.perf_counter()
                        if left <= 0:
                            break
                        stream.changed.clear()
                        try:
                            await asyncio.wait_for(stream.changed.wait(), left)
                        except TimeoutError:
                            break
                    if stream.rank and stream.rank["score"] == want:
                        latencies.append((stream.rank_at - accepted) * 1000)
                        if user in applied:  # the board event naming the user, as Pub/Sub told it
                            to_event.append((applied[user] - accepted) * 1000)
                            event_to_rank.append((stream.rank_at - applied[user]) * 1000)
                            event_to_frames.append((user, applied[user]))
                    else:
                        missed += 1
                    # Random: a fixed pause puts the writes in step with the gateway's ticks.
                    await asyncio.sleep(pause.uniform(0.2, 0.7))

            listening = asyncio.create_task(listen())
            mirroring = asyncio.create_task(follow_mirror())
            await asyncio.gather(flow(), *(probe(lane) for lane in range(args.lanes)))
            window = time.perf_counter() - t0
            cpu = sum(cpu_split(gateway.pid)) - cpu0
            calls1 = await redis_calls(redis)
            mirror_commands = mirror.commands  # this process's own reads, all after calls0
            lookups = await gateway_metric(gw, "scorecast_gateway_rank_lookups_total") - lookups0
            frames = await gateway_metric(gw, "scorecast_gateway_rank_frames_total") - frames0
            tsum = await gateway_metric(gw, "scorecast_gateway_rank_tick_seconds_sum") - tsum0
            tcount = await gateway_metric(gw, "scorecast_gateway_rank_tick_seconds_count") - tcount0
            bsum = await gateway_metric(gw, "scorecast_gateway_broadcast_seconds_sum") - bsum0
            bcount = await gateway_metric(gw, "scorecast_gateway_broadcast_seconds_count") - bcount0
            own = await gateway_metric(gw, "scorecast_gateway_rank_own_lookups_total") - own0
            osum = await gateway_metric(gw, "scorecast_gateway_rank_own_seconds_sum") - osum0
            ocount = await gateway_metric(gw, "scorecast_gateway_rank_own_seconds_count") - ocount0
            # The moves of the last seconds get their refresh time to arrive (no writes now).
            await asyncio.sleep(settings.rank_refresh_s + 2.0 if ranks_on else 0.0)
            await asyncio.wait_for(events.join(), 30)
            for task in (listening, mirroring):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await pubsub.aclose()
        moved: list[float] = []
        undelivered = 0
        for i, w in enumerate(watchers):
            log = probe_streams[args.probes + i].log
            assert log is not None
            for version, at in moves[w]:
                got = next((t for v, t in log if v >= version), None)
                if got is None:
                    undelivered += 1
                else:
                    moved.append((got - at) * 1000)
        result.update(
            moved_changes=sum(len(m) for m in moves.values()),
            moved_undelivered=undelivered,
            moved_p50_ms=pct(moved, 50) if moved else None,
            moved_p99_ms=pct(moved, 99) if moved else None,
            moved_max_ms=max(moved) if moved else None,
            own_lookups_per_s=own / window,
            own_lane_passes=ocount,
            own_lane_mean_ms=(osum / ocount * 1000) if ocount else None,
        )
        # For comparison, the shared frame over the same connections: from each board event above
        # to the next board frame the same probe client received.
        to_frame = []
        for user, at in event_to_frames:
            later = [t for t in probe_streams[int(user[1:])].frame_times if t >= at]
            if later:
                to_frame.append((later[0] - at) * 1000)
        result.update(
            event_to_frame_p50_ms=pct(to_frame, 50) if to_frame else None,
            event_to_frame_p99_ms=pct(to_frame, 99) if to_frame else None,
        )
        delta = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0) > 0}
        ops = sum(delta.values()) - mirror_commands
        result.update(
            window_s=window,
            redis_ops_per_s=ops / window,
            redis_ops=ops,
            bench_ops=mirror_commands,
            writes=written[0],
            evalsha_per_s=delta.get("evalsha", 0) / window,
            zrevrank_per_s=delta.get("zrevrank", 0) / window,
            top_commands={k: round(v / window) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:8]},
            gateway_cpu_s=cpu,
            gateway_cpu_share=cpu / window,
            broadcast_mean_ms=(bsum / bcount * 1000) if bcount else float("nan"),
            broadcasts=bcount,
            rank_tick_mean_ms=(tsum / tcount * 1000) if tcount else float("nan"),
            rank_ticks=tcount,
            latencies_ms=sorted(round(x) for x in latencies),
            event_to_rank_ms=sorted(round(x) for x in event_to_rank),
            rank_lookups_per_s=lookups / window,
            rank_events_per_s=frames / window,
            probe_samples=len(latencies),
            probe_missed=missed,
            p50_ms=pct(latencies, 50) if latencies else None,
            p99_ms=pct(latencies, 99) if latencies else None,
            to_event_p50_ms=pct(to_event, 50) if to_event else None,
            to_event_p99_ms=pct(to_event, 99) if to_event else None,
            event_to_rank_p50_ms=pct(event_to_rank, 50) if event_to_rank else None,
            event_to_rank_p99_ms=pct(event_to_rank, 99) if event_to_rank else None,
        )
        summaries = []
        for g in gens:
            out, _ = await asyncio.wait_for(g.communicate(), args.seconds + 60)
            summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
        result["viewers"] = first_held + sum(s["streams"] for s in summaries)
        result["failed"] = sum(s["failed"] for s in summaries) + sum(1 for s in probe_streams if s.closed)
        return result
    finally:
        for g in gens:
            if g.returncode is None:
                g.kill()
                await g.wait()
        proc.stop()
        stack.procs.remove(proc)


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="scorecast-rank-bench-"))
    redis_srv = redis_server(free_port(), work / "redis").start()
    mongo = mongo_server(free_port(), work / "mongo").start()
    settings = Settings(
        redis_url=redis_srv.url,
        mongo_url=mongo.url,
        mongo_db="bench",
        jwt_secret=uuid.uuid4().hex * 2,
        access_token_ttl_s=3600,
        rate_limit_per_s=10_000.0,
        rate_limit_burst=10_000,
        stream_block_ms=50,
        slow_client_timeout_s=30.0,
    )
    stack = Stack(settings, work)
    redis = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
    try:
        stack.start("ingest.api")
        stack.start("ingest.worker")
        rng = random.Random(1)
        totals = {viewer_id(i): rng.randint(1, 100_000) for i in range(args.viewers)}
        store = BoardStore(redis)
        await store.stage_and_commit(
            "global",
            [(u, s, i + 1) for i, (u, s) in enumerate(totals.items())],
            version=len(totals),
            force=True,
        )
        for start in range(0, args.viewers, 1000):
            chunk = list(totals)[start : start + 1000]
            await store.cache_profiles(
                {u: Profile(name=u, avatar_url=None, region="EU") for u in chunk}, ttl_s=86400
            )
        scorer = TokenIssuer(stack.settings).access_token(
            user_id="points-service", name="Points service", roles=["scorer"]
        )
        results = [
            await phase(args, stack, redis, scorer, totals, ranks_on=False),
            await phase(args, stack, redis, scorer, totals, ranks_on=True),
        ]
        for r in results:
            print(json.dumps(r, default=lambda x: round(x, 3) if isinstance(x, float) else x))
        off, on = results
        print(
            f"viewers {on['viewers']} (failed {off['failed']} / {on['failed']}), "
            f"window {on['window_s']:.1f} s, {args.rate} score writes/s"
        )
        # What the score writes cost is taken from the phase without ranks (per write), so a
        # different number of writes in the two windows does not count as rank cost.
        per_write = off["redis_ops"] / max(1, off["writes"])
        rank_ops_per_s = (on["redis_ops"] - per_write * on["writes"]) / on["window_s"]
        print(
            f"redis ops/s      off {off['redis_ops_per_s']:.0f}   on {on['redis_ops_per_s']:.0f}   "
            f"({off['writes']} / {on['writes']} score writes; {per_write:.1f} ops per write)"
        )
        print(
            f"rank cost        {rank_ops_per_s:.0f} ops/s for {on['rank_lookups_per_s']:.0f} lookups/s "
            f"({rank_ops_per_s / max(1.0, on['rank_lookups_per_s']):.2f} ops per lookup; "
            f"ZREVRANK {on['zrevrank_per_s']:.0f}/s)"
        )
        # The broadcasts' CPU likewise, per broadcast from the phase without ranks.
        per_broadcast = off["gateway_cpu_s"] / max(1.0, off["broadcasts"])
        rank_cpu = (on["gateway_cpu_s"] - per_broadcast * on["broadcasts"]) / on["window_s"]
        print(
            f"gateway CPU      off {off['gateway_cpu_share'] * 100:.1f} %   "
            f"on {on['gateway_cpu_share'] * 100:.1f} %   (of one core; "
            f"ratio {on['gateway_cpu_share'] / max(off['gateway_cpu_share'], 1e-9):.2f})"
        )
        print(
            f"rank CPU         {rank_cpu * 100:.1f} % of one core ({off['broadcasts']:.0f} / "
            f"{on['broadcasts']:.0f} broadcasts; {per_broadcast * 1000:.0f} ms CPU per broadcast, ranks off)"
        )
        print(
            f"shared frame     mean broadcast off {off['broadcast_mean_ms']:.2f} ms   "
            f"on {on['broadcast_mean_ms']:.2f} ms"
        )
        print(
            f"rank events/s    {on['rank_events_per_s']:.0f}   "
            f"rank ticks {on['rank_ticks'] / on['window_s']:.1f}/s, "
            f"mean {on['rank_tick_mean_ms']:.1f} ms (read + hand over)"
        )
        print(
            f"202 -> own rank  p50 {on['p50_ms']:.0f} ms   p99 {on['p99_ms']:.0f} ms   "
            f"({on['probe_samples']} samples, {on['probe_missed']} missed within 10 s)"
        )
        print(
            f"  of which       202 -> board event (ingest + worker) p50 {on['to_event_p50_ms']:.0f} ms  "
            f"p99 {on['to_event_p99_ms']:.0f} ms;  board event -> rank event (gateway) "
            f"p50 {on['event_to_rank_p50_ms']:.0f} ms  p99 {on['event_to_rank_p99_ms']:.0f} ms"
        )
        if on["own_lane_passes"]:
            print(
                f"  own lane       {on['own_lookups_per_s']:.0f} lookups/s in "
                f"{on['own_lane_passes'] / on['window_s']:.1f} passes/s, "
                f"mean {on['own_lane_mean_ms']:.1f} ms (first board event waiting -> rank events handed over)"
            )
        if on["moved_changes"]:
            print(
                f"others moved it  board event -> rank event p50 {on['moved_p50_ms']:.0f} ms  "
                f"p99 {on['moved_p99_ms']:.0f} ms  max {on['moved_max_ms']:.0f} ms  "
                f"({on['moved_changes']} changes of {args.watchers} watchers' places, "
                f"{on['moved_undelivered']} never delivered)"
            )
        print(
            f"  compare        board event -> next shared frame at the same clients "
            f"p50 {on['event_to_frame_p50_ms']:.0f} ms  p99 {on['event_to_frame_p99_ms']:.0f} ms"
        )
    finally:
        await redis.aclose()
        stack.close()
        mongo.stop()
        redis_srv.stop()


def pct(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--lanes", type=int, default=4, help="probe viewers scored concurrently")
    parser.add_argument(
        "--watchers", type=int, default=200, help="viewers held here, never scored, whose moves are timed"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="score writes per second to random viewers")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    uvloop.run(generate(args) if args.generate else run(args))


if __name__ == "__main__":
    sys.exit(main())
