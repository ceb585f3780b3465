"""Faults on a seeded schedule: kill -9 and restart of the worker, the flusher, a gateway, Redis
(on the same port, from its AOF; on a Redis Cluster one master, with its data and slots), and a
MongoDB outage across a flush (nx-27017 killed and started again on the same data directory).
Faults do not overlap, and each is recovered before the schedule's end, well before the run
stops.

After a cluster master is back, every gateway must hold its sharded subscription on each master
again and have re-read its boards (``scorecast_gateway_pubsub_shards`` at the master count,
``scorecast_gateway_pubsub_resyncs_total`` up): how long that took goes into the fault's line of
the report, and a gateway that did not within ``RESYNC_TIMEOUT_S`` is a violation."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

from sim.cluster import GATEWAYS, Cluster
from sim.wire import Recorder

KINDS = ("worker", "flusher", "gateway", "redis", "mongo")
# Faults of these kinds make the system answer 503 / ``unavailable`` while they last.
OUTAGES = ("redis", "mongo")
RESYNC_TIMEOUT_S = 30.0
RESYNCS = "scorecast_gateway_pubsub_resyncs_total"
SHARDS = "scorecast_gateway_pubsub_shards"


@dataclasses.dataclass
class Fault:
    at_s: float  # after the run started
    target: str  # a process name of :class:`Cluster`
    down_s: float
    kind: str = ""  # one of KINDS
    note: str = ""  # what was measured around it (a cluster master's resync)

    def describe(self) -> str:
        line = f"t={self.at_s:.1f}s kill -9 {self.target}, {self.down_s:.1f}s down"
        return f"{line} ({self.note})" if self.note else line


def targets(cluster: Cluster) -> dict[str, tuple[str, ...]]:
    """The processes each kind of fault may hit in ``cluster``."""
    return {
        "worker": cluster.workers,
        "flusher": ("flusher",),
        "gateway": tuple(f"gateway-{g}" for g in GATEWAYS),
        "redis": tuple(cluster.redis_servers),
        "mongo": ("mongo",),
    }


def schedule(
    rng: random.Random,
    *,
    duration_s: float,
    flush_interval_s: float,
    hits: dict[str, tuple[str, ...]] | None = None,
    early: tuple[str, ...] = (),
) -> list[Fault]:
    """Faults from 10 % to 75 % of the run, every kind once per round, rounds in a seeded order.

    ``hits``: the processes of each kind (one is drawn where there are several; default: one
    Redis, one worker, the gateways). ``early``: kinds put among the first three faults of the
    first round, so that a short run surely has them."""
    hits = hits or {"gateway": tuple(f"gateway-{g}" for g in GATEWAYS)}
    faults: list[Fault] = []
    t = 0.1 * duration_s
    kinds: list[str] = []
    first = True
    while True:
        if not kinds:
            kinds = list(KINDS)
            rng.shuffle(kinds)
            if first:
                for kind in early:
                    kinds.remove(kind)
                    kinds.insert(len(kinds) - rng.randint(0, 2), kind)  # popped from the end
                first = False
        kind = kinds.pop()
        if kind == "mongo":
            down = 2 * flush_interval_s + rng.uniform(0.5, 2.0)  # across at least one flush
        else:
            down = rng.uniform(0.5, 3.0)
        choices = hits.get(kind, (kind,))
        target = rng.choice(choices) if len(choices) > 1 else choices[0]
        if t + down > 0.75 * duration_s:
            return faults
        faults.append(Fault(round(t, 2), target, round(down, 2), kind))
        t += down + rng.uniform(2.0, 6.0)


async def inject(cluster: Cluster, faults: list[Fault], recorder: Recorder, started: float) -> None:
    """Run the schedule (times from ``started``, a ``time.monotonic()``)."""
    for fault in faults:
        delay = started + fault.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        master = cluster.redis_cluster is not None and fault.kind == "redis"
        resyncs = await resync_counts(cluster) if master else {}
        window = recorder.outage(fault.target) if fault.kind in OUTAGES else None
        recorder.faults += 1
        await asyncio.to_thread(cluster.kill, fault.target)
        await asyncio.sleep(fault.down_s)
        if master:
            await asyncio.to_thread(cluster.start_master, fault.target)
            answered = time.monotonic()
            polling = asyncio.create_task(resynced(cluster, fault, resyncs, recorder, answered))
            await asyncio.to_thread(cluster.wait_ok)
            ok_s = time.monotonic() - answered
            await polling
            fault.note = f"cluster ok {ok_s:.2f}s after the master answered; {fault.note}"
        else:
            await asyncio.to_thread(cluster.restart, fault.target)
        if window is not None:
            window.end = time.monotonic()


async def resync_counts(cluster: Cluster) -> dict[str, float]:
    """Each gateway's count of Pub/Sub resyncs so far."""
    found = await asyncio.gather(*(asyncio.to_thread(cluster.gateway_metrics, g) for g in GATEWAYS))
    return {g: metrics.get(RESYNCS, 0.0) for g, metrics in zip(GATEWAYS, found, strict=True)}


async def resynced(
    cluster: Cluster, fault: Fault, before: dict[str, float], recorder: Recorder, answered: float
) -> None:
    """Wait until every gateway subscribed again on every master and re-read its boards after
    ``fault`` (a cluster master's restart, which answered at ``answered``, a monotonic time);
    note how long it took (to within one poll of both gateways' ``/metrics``). Timing is
    reported, not judged (the machine may be loaded); a gateway that did not within
    RESYNC_TIMEOUT_S is a violation."""
    masters = len(cluster.redis_servers)
    waiting = set(GATEWAYS)
    took: dict[str, float] = {}
    while waiting and time.monotonic() - answered < RESYNC_TIMEOUT_S:
        names = sorted(waiting)
        found = await asyncio.gather(*(asyncio.to_thread(cluster.gateway_metrics, g) for g in names))
        seen = time.monotonic()
        for name, metrics in zip(names, found, strict=True):
            if metrics.get(SHARDS) == masters and metrics.get(RESYNCS, 0.0) > before.get(name, 0.0):
                took[name] = seen - answered
                waiting.discard(name)
        await asyncio.sleep(0.05)
    fault.note = ", ".join(
        f"gateway-{g} resynced within {s:.2f}s of the master answering" for g, s in sorted(took.items())
    )
    for name in sorted(waiting):
        recorder.violation(
            f"gateway-{name} did not subscribe again on all {masters} masters and resync its boards "
            f"within {RESYNC_TIMEOUT_S:.0f}s of {fault.target}'s restart"
        )
