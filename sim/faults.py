"""Faults on a seeded schedule: kill -9 and restart of the worker, the flusher, a gateway, Redis
(on the same port, from its AOF), and a MongoDB outage across a flush (nx-27017 killed and
started again on the same data directory). Faults do not overlap, and each is recovered before
the schedule's end, well before the run stops."""

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


@dataclasses.dataclass(frozen=True)
class Fault:
    at_s: float  # after the run started
    target: str  # a process name of :class:`Cluster`
    down_s: float

    def describe(self) -> str:
        return f"t={self.at_s:.1f}s kill -9 {self.target}, {self.down_s:.1f}s down"


def schedule(rng: random.Random, *, duration_s: float, flush_interval_s: float) -> list[Fault]:
    """Faults from 10 % to 75 % of the run, every kind once per round, rounds in a seeded order."""
    faults: list[Fault] = []
    t = 0.1 * duration_s
    kinds: list[str] = []
    while True:
        if not kinds:
            kinds = list(KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        if kind == "mongo":
            down = 2 * flush_interval_s + rng.uniform(0.5, 2.0)  # across at least one flush
        else:
            down = rng.uniform(0.5, 3.0)
        target = f"gateway-{rng.choice(GATEWAYS)}" if kind == "gateway" else kind
        if t + down > 0.75 * duration_s:
            return faults
        faults.append(Fault(round(t, 2), target, round(down, 2)))
        t += down + rng.uniform(2.0, 6.0)


async def inject(cluster: Cluster, faults: list[Fault], recorder: Recorder, started: float) -> None:
    """Run the schedule (times from ``started``, a ``time.monotonic()``)."""
    for fault in faults:
        delay = started + fault.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        window = recorder.outage(fault.target) if fault.target in OUTAGES else None
        recorder.faults += 1
        await asyncio.to_thread(cluster.kill, fault.target)
        await asyncio.sleep(fault.down_s)
        await asyncio.to_thread(cluster.restart, fault.target)
        if window is not None:
            window.end = time.monotonic()
