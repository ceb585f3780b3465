"""One simulation run: the cluster, the school, the faults, the quiescence and the checks.

``python -m sim --seed N --seconds S [--learners L] [--subscribers K] [--cluster] [--workers W]``
runs one and exits 1 when an invariant failed; the report names the seed and the exact command
that replays the schedule. ``--cluster`` runs it on a 3-master Redis Cluster (``REDIS_CLUSTER=1``
for every process) whose fault is one master killed and started again with its data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sim import faults as fault_mod
from sim.actors import Context, Device, LearnerActor, ScorerActor, Subscriber
from sim.checks import Checker, RedisLayout
from sim.cluster import Cluster
from sim.oracle import Course, Learner, Oracle, Quiz
from sim.policy import CURRENT, Policy
from sim.wire import Api, Identity, Profile, Recorder

# Region codes the deployment lists in BOARD_REGIONS (only those boards can be followed).
REGIONS = ("EU", "NA", "APAC", None)
ZONES = ("UTC", "UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York")
BOARDS = ("global", "weekly", "monthly", "region:EU", "region:NA", "course:sim-c1", "course:sim-c2")
FINISH_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    seed: int
    seconds: float = 60.0
    learners: int = 16
    subscribers: int = 10
    scorers: int = 2
    flush_interval_s: float = 1.0
    access_token_ttl_s: int = 30
    progress_every_s: float = 10.0
    policy: Policy = CURRENT
    redis_cluster: bool = False  # a 3-master Redis Cluster instead of one Redis
    workers: int = 1  # ingest worker processes

    def replay(self) -> str:
        line = (
            f".venv/bin/python -m sim --seed {self.seed} --seconds {self.seconds:g} "
            f"--learners {self.learners} --subscribers {self.subscribers}"
        )
        if self.redis_cluster:
            line += " --cluster"
        if self.workers != 1:
            line += f" --workers {self.workers}"
        return line


@dataclasses.dataclass
class Report:
    config: Config
    violations: list[str]
    actions: int
    faults: list[str]
    statuses: dict[str, int]
    ws_errors: dict[str, int]
    elapsed_s: float
    workdir: str
    oracle: Oracle = dataclasses.field(repr=False, default_factory=lambda: Oracle(CURRENT))

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [
            f"simulation seed={self.config.seed}: {'OK' if self.ok else 'FAILED'} "
            f"after {self.elapsed_s:.0f}s, "
            f"{self.actions} actions, {len(self.faults)} faults, {len(self.violations)} violations",
            "faults: " + ("; ".join(self.faults) or "none"),
            "answers: " + ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())),
            "WebSocket errors: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.ws_errors.items())) or "none"),
        ]
        if not self.ok:
            shown = self.violations[:40]
            lines += ["violations:", *(f"  - {v}" for v in shown)]
            if len(self.violations) > len(shown):
                lines.append(f"  ... and {len(self.violations) - len(shown)} more")
            lines += [f"logs and data: {self.workdir}", f"replay: {self.config.replay()}"]
        return "\n".join(lines)


def rng_for(seed: int, name: str) -> random.Random:
    """The RNG of one actor: derived from the master seed and the actor's name only."""
    return random.Random(f"{seed}:{name}")


def build_courses(rng: random.Random) -> list[Course]:
    courses = []
    for c in (1, 2):
        order = [f"l{i}" for i in range(1, 5)]
        courses.append(
            Course(
                course_id=f"sim-c{c}",
                order=order,
                durations={lec: float(rng.randint(12, 20)) / 2 for lec in order},
                marks={lec: rng.randint(0, 20) for lec in order},
            )
        )
    return courses


def build_quizzes(rng: random.Random) -> list[Quiz]:
    quizzes = []
    for q, course_id in ((1, "sim-c1"), (2, "sim-c2"), (3, None)):
        questions = [f"q{i}" for i in range(rng.randint(3, 5))]
        quizzes.append(
            Quiz(
                quiz_id=f"sim-quiz{q}",
                course_id=course_id,
                key={qid: rng.choice("abcd") for qid in questions},
                points={qid: rng.randint(1, 50) for qid in questions},
            )
        )
    return quizzes


async def setup(admin: Identity, oracle: Oracle, rng: random.Random) -> None:
    """The admin creates the courses and quizzes the school uses."""
    for course in build_courses(rng):
        body = {
            "title": course.course_id,
            "sections": [
                {
                    "sectionId": "s1",
                    "title": "Section 1",
                    "lectures": [
                        {
                            "lectureId": lec,
                            "title": lec,
                            "durationSeconds": course.durations[lec],
                            "marks": course.marks[lec],
                        }
                        for lec in course.order
                    ],
                }
            ],
        }
        r = await admin.send("PUT", f"/api/v1/courses/{course.course_id}", "setup", body=body)
        if r.status_code != 200:
            raise RuntimeError(f"creating {course.course_id} answered {r.status_code}: {r.text}")
        oracle.courses[course.course_id] = course
    for quiz in build_quizzes(rng):
        quiz_body: dict[str, Any] = {
            "title": quiz.quiz_id,
            "questions": [
                {"questionId": q, "correctOption": quiz.key[q], "points": quiz.points[q]} for q in quiz.key
            ],
        }
        if quiz.course_id:
            quiz_body["courseId"] = quiz.course_id
        r = await admin.send("PUT", f"/api/v1/quizzes/{quiz.quiz_id}", "setup", body=quiz_body)
        if r.status_code != 200:
            raise RuntimeError(f"creating {quiz.quiz_id} answered {r.status_code}: {r.text}")
        oracle.quizzes[quiz.quiz_id] = quiz


async def simulate(config: Config, *, workdir: Path | None = None) -> Report:
    """Run one simulation; the report lists every violation (empty: all invariants held)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="scorecast-sim-"))
    started = time.monotonic()
    policy = config.policy
    recorder = Recorder(policy)
    oracle = Oracle(policy)
    cluster = Cluster(
        workdir,
        flush_interval_s=config.flush_interval_s,
        access_token_ttl_s=config.access_token_ttl_s,
        redis_cluster=config.redis_cluster,
        workers=config.workers,
    )
    hard_deadline = started + config.seconds + FINISH_TIMEOUT_S + 120.0
    await asyncio.to_thread(cluster.start)
    api = Api(cluster.ingest_url, recorder, hard_deadline=hard_deadline)
    ctx = Context(oracle, recorder, hard_deadline=hard_deadline)
    tasks: list[asyncio.Task[None]] = []
    subscribers: list[Subscriber] = []
    schedule: list[fault_mod.Fault] = []
    try:
        admin = Identity(api, Profile("sim-admin", "Admin", roles=("admin",)))
        await admin.login()
        await setup(admin, oracle, rng_for(config.seed, "setup"))
        identities: dict[str, Identity] = {}
        actors: list[LearnerActor] = []
        course_ids, quiz_ids = sorted(oracle.courses), sorted(oracle.quizzes)
        for i in range(config.learners):
            rng = rng_for(config.seed, f"learner{i}")
            user_id = f"sim-u{i:03d}"
            region, tz = rng.choice(REGIONS), rng.choice(ZONES)
            identity = Identity(api, Profile(user_id, f"Learner {i}", region=region, tz=tz))
            oracle.learners[user_id] = Learner(user_id, region.upper() if region else None, tz)
            identities[user_id] = identity
            devices = [
                Device(ctx, identity, "A", cluster.gateway_url("A"), clock_skew_ms=0),
                Device(ctx, identity, "B", cluster.gateway_url("B"), clock_skew_ms=-rng.randint(0, 2000)),
            ]
            actors.append(LearnerActor(ctx, rng, identity, devices, course_ids, quiz_ids))
        await asyncio.gather(*(identity.login() for identity in identities.values()))
        scorer = Identity(api, Profile("sim-scorer", "Scoring service", roles=("scorer",)))
        viewer = Identity(api, Profile("sim-viewer", "Viewer"))
        await scorer.login()
        await viewer.login()
        for k in range(config.subscribers):
            board = BOARDS[k % len(BOARDS)]
            transport = "sse" if k % 2 == 0 else "ws"
            gateway = "A" if (k // 2) % 2 == 0 else "B"
            subscribers.append(Subscriber(ctx, viewer, board, transport, cluster.gateway_url(gateway)))
        tasks += [asyncio.create_task(s.run()) for s in subscribers]
        run_started = time.monotonic()
        schedule = fault_mod.schedule(
            rng_for(config.seed, "faults"),
            duration_s=config.seconds,
            flush_interval_s=config.flush_interval_s,
            hits=fault_mod.targets(cluster),
            early=("redis",) if config.redis_cluster else (),  # a short run surely kills a master
        )
        injector = asyncio.create_task(fault_mod.inject(cluster, schedule, recorder, run_started))
        workers = [asyncio.create_task(a.run()) for a in actors]
        workers += [
            asyncio.create_task(
                ScorerActor(ctx, rng_for(config.seed, f"scorer{j}"), scorer, identities, course_ids).run()
            )
            for j in range(config.scorers)
        ]
        progress = asyncio.create_task(report_progress(config, recorder, run_started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(injector), config.seconds)
        await asyncio.sleep(max(0.0, run_started + config.seconds - time.monotonic()))
        ctx.stop.set()
        await injector
        done, pending = await asyncio.wait(workers, timeout=FINISH_TIMEOUT_S)
        for task in pending:
            recorder.violation("an actor did not finish its last action in time")
            task.cancel()
        for task in done:
            if task.exception() is not None:
                recorder.violation(f"an actor crashed: {task.exception()!r}")
        progress.cancel()
        for name in cluster.dead():
            recorder.violation(f"process {name} died by itself:\n{cluster.logs(name)[-2000:]}")
        checker = Checker(
            oracle,
            recorder,
            redis=RedisLayout(
                cluster.settings.redis_url,
                cluster=cluster.settings.redis_cluster,
                stream_partitions=cluster.settings.stream_partition_count,
                dirty_buckets=cluster.settings.dirty_bucket_count,
            ),
            mongo_url=cluster.settings.mongo_url,
            mongo_db=cluster.settings.mongo_db,
            learners=identities,
            reader=viewer,
            subscribers=subscribers,
            flush_interval_s=config.flush_interval_s,
        )
        try:
            await checker.run()
        finally:
            await checker.close()
    finally:
        for sub in subscribers:
            sub.done.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await asyncio.to_thread(cluster.close)
    report = Report(
        config=config,
        violations=recorder.violations,
        actions=recorder.actions,
        faults=[f.describe() for f in schedule],
        statuses=dict(recorder.statuses),
        ws_errors=dict(recorder.ws_errors),
        elapsed_s=time.monotonic() - started,
        workdir=str(workdir),
        oracle=oracle,
    )
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        dump_oracle(oracle, workdir / "oracle.json")
    return report


def dump_oracle(oracle: Oracle, path: Path) -> None:
    """What the simulation was told, for reading a failure beside the stack's logs and data."""
    writes = {
        action_id: {**dataclasses.asdict(w), "outcome": w.outcome.name}
        for action_id, w in oracle.writes.items()
    }
    pings = {
        f"{user_id}|{course_id}": [dataclasses.asdict(p) for p in records]
        for (user_id, course_id), records in oracle.pings.items()
    }
    path.write_text(json.dumps({"writes": writes, "pings": pings}, indent=1, default=str))


async def report_progress(config: Config, recorder: Recorder, started: float) -> None:
    while True:
        await asyncio.sleep(config.progress_every_s)
        print(
            f"sim seed={config.seed} elapsed={time.monotonic() - started:.0f}s actions={recorder.actions} "
            f"faults={recorder.faults} violations={len(recorder.violations)}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="master seed (default: random)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the school runs")
    parser.add_argument("--learners", type=int, default=16)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--cluster", action="store_true", help="on a 3-master Redis Cluster")
    parser.add_argument("--workers", type=int, default=1, help="ingest worker processes")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    config = Config(
        seed=seed,
        seconds=args.seconds,
        learners=args.learners,
        subscribers=args.subscribers,
        redis_cluster=args.cluster,
        workers=args.workers,
    )
    print(f"simulation seed={seed}: replay with {config.replay()}", flush=True)
    import uvloop

    report = uvloop.run(simulate(config))
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
