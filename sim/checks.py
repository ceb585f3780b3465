"""The invariants, checked once the faults stopped and the system quiesced.

Each check compares what the system shows (the REST API, MongoDB, Redis, the subscribers' last
frames) with what the oracle derives from what the simulation was told, and reports every
difference as a violation: one line naming the user, board or document and both values.

Redis is read with its own client (a cluster client on a Redis Cluster), by the key names of the
contract: every partition of the score and completion streams, every dirty bucket and its
in-flight twin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from typing import Any

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from contract import keys
from contract.boards import resolve
from sim.actors import Subscriber
from sim.oracle import Oracle
from sim.policy import Tri
from sim.wire import Identity, Recorder

QUIESCE_TIMEOUT_S = 90.0
CONVERGE_TIMEOUT_S = 20.0
STREAMS = ((keys.SCORE_STREAM, keys.WORKER_GROUP), (keys.COMPLETION_STREAM, keys.ACHIEVEMENT_GROUP))


@dataclasses.dataclass(frozen=True)
class RedisLayout:
    """Where the stack keeps what the checks read: one Redis or a cluster, and how many parts
    the streams and the dirty set are split into (``Settings.stream_partition_count`` /
    ``dirty_bucket_count`` of the stack)."""

    url: str
    cluster: bool = False
    stream_partitions: int = 1
    dirty_buckets: int = 1

    def client(self) -> Any:
        if self.cluster:
            return aioredis.RedisCluster.from_url(self.url, decode_responses=True)
        return aioredis.Redis.from_url(self.url, decode_responses=True)

    def streams(self) -> list[tuple[str, str]]:
        """Every partition of the score and completion streams, with its consumer group."""
        return [
            (part, group) for base, group in STREAMS for part in keys.partitions(base, self.stream_partitions)
        ]

    def dirty_sets(self) -> list[str]:
        """Every dirty bucket and its in-flight set."""
        return [key for pair in keys.dirty_buckets(self.dirty_buckets) for key in pair]


class Checker:
    def __init__(
        self,
        oracle: Oracle,
        recorder: Recorder,
        *,
        redis: RedisLayout,
        mongo_url: str,
        mongo_db: str,
        learners: dict[str, Identity],
        reader: Identity,
        subscribers: list[Subscriber],
        flush_interval_s: float,
    ) -> None:
        self.oracle = oracle
        self.recorder = recorder
        self.layout = redis
        self.redis = redis.client()
        self.mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        self.db = self.mongo_client[mongo_db]
        self.learners = learners
        self.reader = reader
        self.subscribers = subscribers
        self.flush_interval_s = flush_interval_s
        self.completed: dict[tuple[str, str], set[str]] = {}

    def violation(self, text: str) -> None:
        self.recorder.violation(text)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.mongo_client.close()

    async def run(self) -> None:
        await self.quiesce()
        await self.stream_bound()
        await self.progress()  # first: it resolves the completions the oracle could not decide
        expected = self.oracle.expected_totals()
        await self.totals(expected)
        await self.mongo_totals(expected)
        await self.mongo_documents()
        await self.stats()
        await self.subscriber_frames()

    # ------------------------------------------------------------ quiescence
    async def backlog(self) -> dict[str, int]:
        """Undelivered plus pending entries per stream partition, and the dirty progress keys
        (waiting or in flight) per set."""
        out: dict[str, int] = {}
        for stream, group in self.layout.streams():
            if not await self.redis.exists(stream):
                out[stream] = 0
                continue
            groups = {g["name"]: g for g in await self.redis.xinfo_groups(stream)}
            info = groups.get(group)
            if info is None:
                out[stream] = await self.redis.xlen(stream)
                continue
            lag = info.get("lag")
            out[stream] = int(info["pending"]) + (int(lag) if lag is not None else 1)
        for dirty in self.layout.dirty_sets():
            out[dirty] = await self.redis.scard(dirty)
        return out

    async def quiesce(self) -> None:
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        while True:
            left = await self.backlog()
            if not any(left.values()):
                break
            if time.monotonic() > deadline:
                left = {k: v for k, v in left.items() if v}
                self.violation(f"the system did not quiesce within {QUIESCE_TIMEOUT_S}s: backlog {left}")
                break
            await asyncio.sleep(0.25)
        # One more flush cycle and a broadcast interval for whatever the last step published.
        await asyncio.sleep(2 * self.flush_interval_s + 1.5)

    async def stream_bound(self) -> None:
        bound = self.oracle.policy.stream_len_bound
        if bound is None:
            return
        for base, _ in STREAMS:  # all partitions of a stream together
            parts = keys.partitions(base, self.layout.stream_partitions)
            length = sum([await self.redis.xlen(part) for part in parts])
            if length > bound:
                self.violation(f"{base} holds {length} entries after processing (bound {bound})")

    # ------------------------------------------------------------ progress, completions, resume
    async def progress(self) -> None:
        for (user_id, course_id), _ in sorted(self.oracle.pings.items()):
            r = await self.learners[user_id].send("GET", f"/api/v1/progress/{course_id}", "check/progress")
            if r.status_code != 200:
                self.violation(f"progress of {user_id} in {course_id} answered {r.status_code} {r.text}")
                continue
            self.check_view(user_id, course_id, r.json())

    def check_view(self, user_id: str, course_id: str, view: dict[str, Any]) -> None:
        oracle = self.oracle
        course = oracle.courses[course_id]
        who = f"{user_id} in {course_id}"
        shown = set(view.get("completedLectures", []))
        for lecture in course.order:
            verdict = oracle.completion(user_id, course_id, lecture)
            if verdict is Tri.MAYBE:
                oracle.resolved[(user_id, course_id, lecture)] = lecture in shown
            elif (verdict is Tri.YES) != (lecture in shown):
                furthest = oracle.max_position(user_id, course_id, lecture)
                self.violation(
                    f"{who}: lecture {lecture} completed={lecture in shown}, but the learner's acked "
                    f"pings say {verdict.name} (furthest {furthest} of {course.durations[lecture]})"
                )
        completed = {lec for lec in course.order if oracle.completion(user_id, course_id, lec) is Tri.YES}
        self.completed[(user_id, course_id)] = completed
        percent = round(100.0 * len(completed) / len(course.order), 1)
        if view.get("completionPercentage") != percent:
            self.violation(
                f"{who}: completionPercentage {view.get('completionPercentage')}, expected {percent}"
            )
        marks = sum(course.marks[lec] for lec in completed)
        if "marksObtained" in view and view["marksObtained"] != marks:
            self.violation(f"{who}: marksObtained {view['marksObtained']}, expected {marks}")
        unlocked = [course.order[0]] + [
            course.order[i + 1] for i in range(len(course.order) - 1) if course.order[i] in completed
        ]
        if set(view.get("unlockedLectures", [])) != set(unlocked):
            self.violation(f"{who}: unlockedLectures {view.get('unlockedLectures')}, expected {unlocked}")
        options = oracle.resume_options(user_id, course_id)
        got = (view.get("lastWatchedLecture"), float(view.get("lastPosition") or 0.0))
        if options and not any(got[0] == lec and abs(got[1] - pos) < 1e-6 for lec, pos in options):
            self.violation(f"{who}: resume point {got}, but the newest acked ping is {options[0]}")
        for lecture, seconds in (view.get("watchTimes") or {}).items():
            limit = oracle.max_position(user_id, course_id, lecture)
            if not 0 <= float(seconds) <= limit + self.oracle.policy.coverage_rounding_s:
                self.violation(f"{who}: watchTimes[{lecture}] = {seconds}, but no ping went past {limit}")

    # ------------------------------------------------------------ board totals
    async def totals(self, expected: dict[tuple[str, str], set[int] | None]) -> None:
        boards = sorted({board for _, board in expected})
        for board in boards:
            members = {u: opts for (u, b), opts in expected.items() if b == board}
            r = await self.reader.send(
                "GET",
                "/api/v1/scores/leaderboard",
                "check/leaderboard",
                params={"board": board, "limit": "100"},
            )
            if r.status_code != 200:
                self.violation(f"leaderboard {board} answered {r.status_code} {r.text}")
                continue
            entries = r.json()["entries"]
            scores = [e["score"] for e in entries]
            if scores != sorted(scores, reverse=True) or [e["rank"] for e in entries] != list(
                range(1, len(entries) + 1)
            ):
                self.violation(
                    f"leaderboard {board} is out of order: {[(e['rank'], e['score']) for e in entries]}"
                )
            shown = {e["userId"]: e["score"] for e in entries}
            for user_id, score in shown.items():
                opts = members.get(user_id)
                if user_id not in members:
                    self.violation(f"{board}: {user_id} shows {score} but was never awarded points there")
                elif opts is not None and score not in opts:
                    self.violation(f"{board}: {user_id} shows {score}, expected one of {sorted(opts)[:8]}")
            if len(entries) < 100:
                for user_id, opts in members.items():
                    if user_id not in shown and opts is not None and 0 not in opts:
                        self.violation(f"{board}: {user_id} missing (expected {sorted(opts)[:8]})")
        for (user_id, board), opts in sorted(expected.items()):
            if opts is None:
                continue
            r = await self.reader.send(
                "GET", f"/api/v1/scores/rank/{user_id}", "check/rank", params={"board": board}
            )
            if r.status_code == 404 and 0 in opts:
                continue
            if r.status_code != 200:
                self.violation(
                    f"rank of {user_id} on {board} answered {r.status_code}, expected {sorted(opts)[:8]}"
                )
            elif r.json()["score"] not in opts:
                self.violation(
                    f"rank of {user_id} on {board}: score {r.json()['score']}, expected {sorted(opts)[:8]}"
                )

    async def mongo_totals(self, expected: dict[tuple[str, str], set[int] | None]) -> None:
        seen: set[tuple[str, str]] = set()
        async for doc in self.db["board_totals"].find({}):
            user_id, board = doc.get("userId"), doc.get("board")
            if doc["_id"] != f"{board}|{user_id}":
                self.violation(f"board_totals {doc['_id']} carries board={board} userId={user_id}")
                continue
            key = (str(user_id), str(board))
            seen.add(key)
            if key not in expected:
                self.violation(f"board_totals {doc['_id']}: score {doc.get('score')} never awarded")
                continue
            opts = expected[key]
            if opts is not None and doc.get("score") not in opts:
                self.violation(
                    f"board_totals {doc['_id']}: score {doc.get('score')}, expected {sorted(opts)[:8]}"
                )
        for key, opts in expected.items():
            if key not in seen and opts is not None and 0 not in opts:
                self.violation(
                    f"board_totals has no document for {key[1]}|{key[0]} (expected {sorted(opts)[:8]})"
                )

    # ------------------------------------------------------------ documents carry their owner's data
    async def mongo_documents(self) -> None:
        oracle = self.oracle
        async for doc in self.db["score_events"].find({}):
            # The id is the actionId, or ``<userId>|<actionId>`` where an actionId counts per user.
            owner, _, action_id = str(doc["_id"]).rpartition("|")
            if owner and owner != doc.get("userId"):
                self.violation(f"score_events {doc['_id']} carries userId {doc.get('userId')}")
            write = oracle.writes.get(action_id)
            if write is not None:
                if doc.get("userId") != write.user_id:
                    self.violation(
                        f"score_events {doc['_id']} belongs to {write.user_id}, carries {doc.get('userId')}"
                    )
            elif doc.get("userId") not in oracle.learners:
                self.violation(f"score_events {doc['_id']}: unknown user {doc.get('userId')}")
        completions: dict[str, int] = {}
        async for doc in self.db["completions"].find({}):
            user_id, course_id, lecture = doc.get("userId"), doc.get("courseId"), doc.get("lectureId")
            done = self.completed.get((str(user_id), str(course_id)), set())
            if lecture not in done:
                self.violation(f"completions {doc['_id']}: {user_id} never completed {course_id}/{lecture}")
            completions[str(user_id)] = completions.get(str(user_id), 0) + 1
        totals = dict.fromkeys(oracle.learners, 0)
        for (user_id, _), done in self.completed.items():
            totals[user_id] += len(done)
        for user_id in totals.keys() | completions.keys():
            count = completions.get(user_id, 0)
            if count != totals.get(user_id, 0):
                self.violation(
                    f"completions of {user_id}: {count} documents, {totals.get(user_id, 0)} completed"
                )
        async for doc in self.db["progress"].find({}):
            self.check_progress_doc(doc)
        activity: dict[str, int] = {}
        async for doc in self.db["activity"].find({}):
            user_id = str(doc.get("userId"))
            if doc["_id"] != f"{user_id}|{doc.get('date')}":
                self.violation(f"activity {doc['_id']} carries userId={user_id} date={doc.get('date')}")
            activity[user_id] = activity.get(user_id, 0) + len(doc.get("events", []))
        for user_id, learner in oracle.learners.items():
            low = learner.marks_sure + totals.get(user_id, 0)
            high = low + learner.marks_maybe
            got = activity.get(user_id, 0)
            if not low <= got <= high:
                self.violation(f"activity of {user_id}: {got} events, expected {low}..{high}")
        self.totals_completed = totals

    def check_progress_doc(self, doc: dict[str, Any]) -> None:
        user_id, course_id = str(doc.get("userId")), str(doc.get("courseId"))
        if doc["_id"] != f"{user_id}|{course_id}":
            self.violation(f"progress {doc['_id']} carries userId={user_id} courseId={course_id}")
            return
        owner = doc["_id"]
        done = self.completed.get((user_id, course_id), set())
        if set(doc.get("completedLectures", [])) != done:
            self.violation(
                f"progress {owner}: completedLectures {doc.get('completedLectures')}, expected {sorted(done)}"
            )
        for field, value in doc.items():
            if field.startswith("w_"):
                limit = self.oracle.max_position(user_id, course_id, field[2:])
                if not 0 <= float(value) <= limit + self.oracle.policy.coverage_rounding_s:
                    self.violation(
                        f"progress {owner}: {field} = {value}, but the owner never went past {limit}"
                    )
        point = resume_of(doc)
        options = self.oracle.resume_options(user_id, course_id)
        if point is None:
            if options:
                self.violation(
                    f"progress {owner}: no resume point after the final flush, expected {options[0]}"
                )
            return
        if not any(point[0] == lec and abs(point[1] - pos) < 1e-6 for lec, pos in options):
            self.violation(
                f"progress {owner}: resume point {point}, but the owner's newest acked ping is {options[:1]}"
            )

    # ------------------------------------------------------------ stats and heatmap (REST)
    async def stats(self) -> None:
        totals: dict[str, int] = getattr(self, "totals_completed", {})
        for user_id, identity in sorted(self.learners.items()):
            learner = self.oracle.learners[user_id]
            r = await identity.send("GET", "/api/v1/stats/student", "check/stats")
            if r.status_code != 200:
                self.violation(f"stats of {user_id} answered {r.status_code}")
                continue
            stats = r.json()
            want = totals.get(user_id, 0)
            if stats["totalCompleted"] != want:
                self.violation(
                    f"stats of {user_id}: totalCompleted {stats['totalCompleted']}, expected {want}"
                )
            days, uncertain = self.oracle.active_days(user_id)
            if not uncertain:
                longest = longest_run(days)
                if stats["longestStreak"] != longest:
                    self.violation(
                        f"stats of {user_id}: longestStreak {stats['longestStreak']}, expected {longest}"
                    )
                last = max(days).isoformat() if days else None
                if stats["lastActiveDate"] != last:
                    self.violation(
                        f"stats of {user_id}: lastActiveDate {stats['lastActiveDate']}, expected {last}"
                    )
            r = await identity.send(
                "GET",
                "/api/v1/progress/heatmap/data",
                "check/heatmap",
                params={"days": "366", "tz": learner.tz},
            )
            if r.status_code != 200:
                self.violation(f"heatmap of {user_id} answered {r.status_code}")
                continue
            count = sum(int(d["count"]) for d in r.json())
            low = learner.marks_sure + totals.get(user_id, 0)
            if not low <= count <= low + learner.marks_maybe:
                self.violation(
                    f"heatmap of {user_id}: {count} events, expected {low}..{low + learner.marks_maybe}"
                )

    # ------------------------------------------------------------ subscribers
    async def subscriber_frames(self) -> None:
        # Named once: a subscriber of ``weekly`` follows the current week, and a week that ends
        # during the check must not change what it is compared with (the gateway moves it to
        # the new week within a second, with a snapshot: a new check would compare that).
        now = dt.datetime.now(dt.UTC)
        target = {id(sub): resolve(sub.board, now) for sub in self.subscribers}
        truth: dict[str, list[tuple[int, str, int]]] = {}
        for sub in self.subscribers:
            board = target[id(sub)]
            if board not in truth:
                r = await self.reader.send(
                    "GET",
                    "/api/v1/scores/leaderboard",
                    "check/leaderboard",
                    params={"board": board, "limit": "10"},
                )
                truth[board] = [(e["rank"], e["userId"], e["score"]) for e in r.json().get("entries", [])]
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            stale = [
                s
                for s in self.subscribers
                if frame_rows(s.last) != truth[target[id(s)]]
                or (s.last or {}).get("board", target[id(s)]) != target[id(s)]
            ]
            if not stale or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        for sub in stale:
            self.violation(
                f"{sub.describe()}: last frame {frame_rows(sub.last)} "
                f"(after {sub.frames} frames, {sub.reconnects} reconnects), board {truth[target[id(sub)]]}"
            )


def frame_rows(frame: dict[str, Any] | None) -> list[tuple[int, str, int]]:
    if frame is None:
        return [(-1, "<no frame>", 0)]
    return [(e["rank"], e["userId"], e["score"]) for e in frame.get("leaderboard", [])]


def resume_of(doc: dict[str, Any]) -> tuple[str | None, float] | None:
    """The newest resume point of a ``progress`` document, in either stored shape: the sortable
    ``resume`` string (``<20-digit seq>|<lecture>|<position>``) or the older
    ``lastWatchedLecture``/``lastPosition``/``lastSeq`` fields."""
    best: tuple[int, str | None, float] | None = None
    stored = doc.get("resume")
    if isinstance(stored, str):
        seq, _, rest = stored.partition("|")
        lecture, _, position = rest.rpartition("|")
        best = (int(seq), lecture or None, float(position))
    if "lastSeq" in doc:
        legacy = (int(doc["lastSeq"]), doc.get("lastWatchedLecture"), float(doc.get("lastPosition", 0.0)))
        if best is None or legacy[0] > best[0]:
            best = legacy
    return (best[1], best[2]) if best else None


def longest_run(days: set[dt.date]) -> int:
    longest = run = 0
    previous: dt.date | None = None
    for day in sorted(days):
        run = run + 1 if previous is not None and day - previous == dt.timedelta(days=1) else 1
        longest = max(longest, run)
        previous = day
    return longest
