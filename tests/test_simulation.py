"""The missing guard of issue #8: a short seeded simulation of a whole school on the real stack,
with faults, checked against an oracle (see the ``sim`` package). ``SIM_SEED`` picks another
schedule; a failure prints the seed and the command that replays it; ``make soak`` runs long.

Issue #9: the same school on a 3-master Redis Cluster (``REDIS_CLUSTER=1``), two gateways and
two workers, with one master killed and started again mid-run among the faults
(``SIM_CLUSTER_SEED``; ``make soak CLUSTER=1`` runs long)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.run import Config, simulate

SEED = int(os.environ.get("SIM_SEED", "8"))
CLUSTER_SEED = int(os.environ.get("SIM_CLUSTER_SEED", "9"))


@pytest.mark.timeout(480)
async def test_a_minute_of_school_with_faults_keeps_every_invariant(tmp_path: Path) -> None:
    config = Config(seed=SEED, seconds=60.0, learners=20, subscribers=10)
    report = await simulate(config, workdir=tmp_path / "sim")
    print(report.summary())
    assert report.actions > 200  # the school really ran
    assert len(report.faults) >= 5  # every kind of fault was injected
    assert report.ok, report.summary()


@pytest.mark.timeout(480)
async def test_school_on_a_redis_cluster_with_a_master_killed_keeps_every_invariant(tmp_path: Path) -> None:
    config = Config(
        seed=CLUSTER_SEED, seconds=50.0, learners=16, subscribers=10, redis_cluster=True, workers=2
    )
    report = await simulate(config, workdir=tmp_path / "sim")
    print(report.summary())
    assert report.actions > 150  # the school really ran
    masters = [f for f in report.faults if "kill -9 redis-" in f]
    assert masters, report.faults  # a cluster master was killed mid-run and came back
    assert all("resynced" in f for f in masters), masters  # every gateway resynced after it
    assert report.ok, report.summary()
