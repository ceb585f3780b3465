"""The missing guard of issue #8: a short seeded simulation of a whole school on the real stack,
with faults, checked against an oracle (see the ``sim`` package). ``SIM_SEED`` picks another
schedule; a failure prints the seed and the command that replays it; ``make soak`` runs long."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.run import Config, simulate

SEED = int(os.environ.get("SIM_SEED", "8"))


@pytest.mark.timeout(480)
async def test_a_minute_of_school_with_faults_keeps_every_invariant(tmp_path: Path) -> None:
    config = Config(seed=SEED, seconds=60.0, learners=20, subscribers=10)
    report = await simulate(config, workdir=tmp_path / "sim")
    print(report.summary())
    assert report.actions > 200  # the school really ran
    assert len(report.faults) >= 5  # every kind of fault was injected
    assert report.ok, report.summary()
