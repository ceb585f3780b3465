"""The simulated school: learners with two devices, a scoring service and board subscribers.

Every actor draws its decisions from its own ``random.Random`` (derived from the master seed), so
a seed replays the same schedule of actions; retries and reconnects draw nothing. Each actor
runs until the ``stop`` event and then finishes what it has in hand (a request in flight is
resolved, a ping is resent until it is acked).

Players are honest: a lecture is watched at real pace (the playhead advances by the time since
the previous ping was acknowledged, so an advance is never faster than the server's own clock
can see), one ping in flight per device; after a reconnect the player resends the ping in hand
with its seq, then rewinds to where the old connection's last acknowledged ping was, so what
the new connection reports is contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sim.oracle import Learner, Oracle, PingRecord, Write, boards_now
from sim.policy import Tri
from sim.wire import BACKOFF_S, Identity, Recorder, Unresolved

ACK_TIMEOUT_S = 10.0


def action_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def ws_url(gateway_url: str, token: str) -> str:
    return gateway_url.replace("http://", "ws://") + f"/api/v1/ws?access_token={token}"


class Context:
    """What every actor shares: the oracle, the recorder, the stop signal and the deadline."""

    def __init__(self, oracle: Oracle, recorder: Recorder, *, hard_deadline: float) -> None:
        self.oracle = oracle
        self.recorder = recorder
        self.stop = asyncio.Event()
        self.hard_deadline = hard_deadline

    def past_deadline(self) -> bool:
        return time.monotonic() > self.hard_deadline


# ---------------------------------------------------------------- a learner's device (WebSocket)
class Device:
    """One WebSocket of a learner, on one gateway; one ping in flight at a time."""

    def __init__(
        self, ctx: Context, identity: Identity, name: str, gateway_url: str, *, clock_skew_ms: int
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.name = name
        self.gateway_url = gateway_url
        self.clock_skew_ms = clock_skew_ms
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.conn = 0
        self.last_seq = 0
        self.waiting: asyncio.Future[str] | None = None
        self.waiting_seq = -1
        self.moves_seen = 0
        self.last_acked: PingRecord | None = None

    @property
    def user_id(self) -> str:
        return self.identity.profile.user_id

    def next_seq(self) -> int:
        # A device's clock (skewed per device) makes its seqs: a second device whose clock is
        # behind sends older seqs, which must never move the resume point back.
        self.last_seq = max(self.last_seq + 1, int(time.time() * 1000) + self.clock_skew_ms)
        return self.last_seq

    async def connect(self) -> None:
        attempt = 0
        while True:
            if self.ctx.past_deadline():
                raise Unresolved(f"{self.user_id}/{self.name}: could not reconnect")
            token = await self.identity.token()
            try:
                ws = await connect(ws_url(self.gateway_url, token), open_timeout=5, close_timeout=1)
            except (OSError, InvalidHandshake, TimeoutError):
                await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
                continue
            self.ws = ws
            self.conn += 1
            self.reader = asyncio.create_task(self._read(ws))
            return

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        self.ws = None

    def _settle(self, outcome: str) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(outcome)

    async def _read(self, ws: ClientConnection) -> None:
        started = time.monotonic()
        try:
            async for raw in ws:
                message: dict[str, Any] = json.loads(raw)
                kind = message.get("type")
                if kind == "ack":
                    if message.get("seq") == self.waiting_seq:
                        self._settle("ack")
                elif kind == "error":
                    code = str(message.get("code"))
                    seq = message.get("seq")
                    if seq is not None and seq != self.waiting_seq:
                        self.ctx.recorder.violation(
                            f"{self.user_id}/{self.name}: error {code} names seq {seq}, "
                            f"but the ping in flight is {self.waiting_seq}"
                        )
                    self.ctx.recorder.ws_error(code, started, f"ping of {self.user_id}/{self.name}")
                    self._settle(code if code in ("unavailable", "token_expired") else "refused")
                elif kind == "progress":
                    self.moves_seen += 1
                    self._check_move(message)
                elif kind == "reconnect":
                    break
        except ConnectionClosed:
            pass
        finally:
            self._settle("lost")
            with contextlib.suppress(Exception):
                await ws.close()
            if self.ws is ws:
                self.ws = None

    def _check_move(self, message: dict[str, Any]) -> None:
        """A move pushed from another device must be one of this learner's own pings."""
        pings = self.ctx.oracle.pings.get((self.user_id, str(message.get("courseId"))), [])
        if not any(
            p.seq == message.get("seq")
            and p.lecture_id == message.get("lectureId")
            and abs(p.position - float(message.get("position", -1))) < 1e-6
            for p in pings
        ):
            self.ctx.recorder.violation(
                f"{self.user_id}/{self.name} was pushed a move it never made: {message}"
            )

    async def ping(
        self, course_id: str, lecture_id: str, position: float, *, kind: str, gap_s: float = 0.0
    ) -> tuple[PingRecord, bool]:
        """Send one ping until it is acked (or refused). Returns it and whether a reconnect
        happened on the way. Raises Unresolved past the hard deadline."""
        record = PingRecord(
            device=self.name,
            conn=self.conn,
            lecture_id=lecture_id,
            position=round(position, 3),
            seq=self.next_seq(),
            sent_at=time.time(),
            kind=kind,
            gap_s=gap_s,
        )
        self.ctx.oracle.ping(self.user_id, course_id, record)
        self.ctx.recorder.actions += 1
        first_conn = self.conn if self.ws is not None else -1
        attempt = 0
        body = json.dumps(
            {
                "type": "progress",
                "courseId": course_id,
                "lectureId": lecture_id,
                "position": record.position,
                "seq": record.seq,
            }
        )
        while True:
            if self.ctx.past_deadline():
                raise Unresolved(f"ping {record.seq} of {self.user_id}/{self.name} never acked")
            if self.ws is None:
                await self.connect()
            ws = self.ws
            assert ws is not None
            loop = asyncio.get_running_loop()
            self.waiting, self.waiting_seq = loop.create_future(), record.seq
            try:
                await ws.send(body)
                outcome = await asyncio.wait_for(asyncio.shield(self.waiting), ACK_TIMEOUT_S)
            except ConnectionClosed:
                outcome = "lost"
            except TimeoutError:
                outcome = "lost"
                self.ctx.recorder.violation(
                    f"ping {record.seq} of {self.user_id}/{self.name} got no answer within {ACK_TIMEOUT_S}s"
                )
                await self.close()
            if outcome == "ack":
                record.acked_at = time.time()
                record.conn = self.conn
                self.last_acked = record
                return record, self.conn != first_conn
            if outcome == "refused":
                record.refused = True
                return record, False
            if outcome == "token_expired":
                await self.close()
                await self.identity.refresh()
            elif outcome == "lost":
                await self.close()
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1


# ---------------------------------------------------------------- learners
class LearnerActor:
    def __init__(
        self,
        ctx: Context,
        rng: random.Random,
        identity: Identity,
        devices: list[Device],
        course_ids: list[str],
        quiz_ids: list[str],
    ) -> None:
        self.ctx = ctx
        self.rng = rng
        self.identity = identity
        self.devices = devices
        self.course_ids = course_ids
        self.quiz_ids = quiz_ids
        self.course_id = rng.choice(course_ids)
        self.submissions: list[tuple[str, dict[str, Any]]] = []

    @property
    def user_id(self) -> str:
        return self.identity.profile.user_id

    @property
    def model(self) -> Learner:
        return self.ctx.oracle.learners[self.user_id]

    async def run(self) -> None:
        try:
            while not self.ctx.stop.is_set():
                roll = self.rng.random()
                if roll < 0.50:
                    await self.watch_next()
                elif roll < 0.70:
                    await self.submit_quiz()
                elif roll < 0.78:
                    await self.mark()
                elif roll < 0.84:
                    await self.identity.refresh()
                elif roll < 0.90:
                    await self.read_progress()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.ctx.stop.wait(), self.rng.uniform(0.2, 1.5))
        except Unresolved as exc:
            self.ctx.recorder.violation(f"{self.user_id}: {exc}")
        finally:
            for device in self.devices:
                await device.close()

    # ------------------------------------------------------------ watching
    async def watch_next(self) -> None:
        oracle = self.ctx.oracle
        course = oracle.courses[self.course_id]
        done = oracle.completed_for_sure(self.user_id, self.course_id)
        pending = [lec for lec in course.order if lec not in done]
        roll = self.rng.random()
        device = self.rng.choice(self.devices)
        if not pending:  # the course is done: watch a lecture again (a long run keeps pinging)
            await self.watch(device, self.rng.choice(course.order), forward_seeks=roll > 0.7)
            self.course_id = self.rng.choice(self.course_ids)
            return
        if roll < 0.1 and done:
            lecture = self.rng.choice(sorted(done))  # watch again: changes nothing durable
        elif roll < 0.18 and len(pending) > 1:
            lecture = pending[1]  # the one after the next: locked
        else:
            lecture = pending[0]
        await self.watch(device, lecture, forward_seeks=roll > 0.7)
        if oracle.completion(self.user_id, self.course_id, lecture) is Tri.YES and self.rng.random() < 0.3:
            await self.complete(lecture)

    async def watch(self, device: Device, lecture: str, *, forward_seeks: bool) -> None:
        course = self.ctx.oracle.courses[self.course_id]
        duration = course.durations[lecture]
        record, _ = await device.ping(self.course_id, lecture, 0.0, kind="start")
        position = record.position
        acked = time.monotonic()
        while position < duration and not self.ctx.stop.is_set():
            roll = self.rng.random()
            kind = "play"
            if roll < 0.08:  # pause a while: the playhead stays
                await asyncio.sleep(self.rng.uniform(0.3, 1.5))
                acked = time.monotonic()
                continue
            if roll < 0.13:  # seek back
                position = max(0.0, position - self.rng.uniform(1.0, 4.0))
                kind = "seek"
            elif roll < 0.17 and forward_seeks:  # seek forward, possibly to the end
                position = min(duration, position + self.rng.uniform(0.5, 1.0) * duration)
                kind = "seek"
            else:
                await asyncio.sleep(self.rng.uniform(0.6, 1.2))
                position = min(duration, position + (time.monotonic() - acked))
            before = device.last_acked
            gap = time.monotonic() - acked
            record, reconnected = await device.ping(self.course_id, lecture, position, kind=kind, gap_s=gap)
            acked = time.monotonic()
            position = record.position
            if reconnected and before is not None and before.lecture_id == lecture:
                # The new connection starts where the old one was last acknowledged.
                record, _ = await device.ping(self.course_id, lecture, before.position, kind="start")
                acked = time.monotonic()
                position = record.position

    async def complete(self, lecture: str) -> None:
        r = await self.identity.send(
            "POST",
            "/api/v1/progress/complete",
            "progress/complete",
            body={"courseId": self.course_id, "lectureId": lecture},
        )
        self.ctx.recorder.actions += 1
        if r.status_code != 200:
            self.ctx.recorder.violation(
                f"{self.user_id}: completing watched {self.course_id}/{lecture} answered "
                f"{r.status_code} {r.text}"
            )

    async def read_progress(self) -> None:
        r = await self.identity.send("GET", f"/api/v1/progress/{self.course_id}", "progress/read")
        if r.status_code != 200:
            self.ctx.recorder.violation(f"{self.user_id}: progress read answered {r.status_code} {r.text}")

    # ------------------------------------------------------------ quizzes and marks
    async def submit_quiz(self) -> None:
        oracle = self.ctx.oracle
        roll = self.rng.random()
        if self.submissions and roll < 0.15:
            quiz_id, body = self.rng.choice(self.submissions)  # a deliberate retry: counted once
        else:
            if self.submissions and roll < 0.5:  # a retake, to improve (or not) on an attempt
                quiz_id = self.rng.choice(self.submissions)[0]
            else:
                quiz_id = self.rng.choice(self.quiz_ids)
            quiz = oracle.quizzes[quiz_id]
            answers = {q: (key if self.rng.random() < 0.6 else "wrong") for q, key in quiz.key.items()}
            body = {
                "quizId": quiz_id,
                "actionId": action_id(self.rng),
                "answers": [{"questionId": q, "selectedOption": o} for q, o in answers.items()],
            }
            self.submissions.append((quiz_id, body))
        quiz = oracle.quizzes[quiz_id]
        grade = quiz.grade({a["questionId"]: a["selectedOption"] for a in body["answers"]})
        write = oracle.write(
            body["actionId"],
            Write(self.user_id, grade, boards_now(self.model.region, quiz.course_id), quiz_id=quiz_id),
        )
        self.ctx.recorder.actions += 1
        try:
            r = await self.identity.send("POST", "/api/v1/quiz/submit", "quiz/submit", body=body)
        except Unresolved:
            return  # the write stays MAYBE
        if r.status_code in (200, 202):
            if write.outcome is Tri.MAYBE:
                write.outcome = Tri.YES
        else:
            if write.outcome is Tri.MAYBE:
                write.outcome = Tri.NO
            self.ctx.recorder.violation(f"{self.user_id}: quiz submission answered {r.status_code} {r.text}")

    async def mark(self) -> None:
        """A heatmap mark has no idempotency key: an attempt whose answer was lost may have
        counted, so each such attempt widens the expected count by one."""
        self.ctx.recorder.actions += 1

        def lost() -> None:
            self.model.marks_maybe += 1

        try:
            r = await self.identity.api.send(
                "POST",
                "/api/v1/progress/heatmap/mark",
                "heatmap/mark",
                token=await self.identity.token(),
                on_lost=lost,
            )
            if r.status_code == 401:
                # The token expired while the mark was retried through an outage (a 401 marks
                # nothing): refresh and mark again, as Identity.send does.
                await self.identity.refresh()
                r = await self.identity.api.send(
                    "POST",
                    "/api/v1/progress/heatmap/mark",
                    "heatmap/mark",
                    token=self.identity.access,
                    on_lost=lost,
                )
        except Unresolved:
            return
        if r.status_code == 200:
            self.model.marks_sure += 1
            self.model.active_times.append(time.time())
        else:
            self.ctx.recorder.violation(f"{self.user_id}: heatmap mark answered {r.status_code} {r.text}")


# ---------------------------------------------------------------- the scoring service
class ScorerActor:
    """Awards points to learners through POST /api/v1/scores/update, with fresh actionIds and
    deliberate retries of earlier ones."""

    def __init__(
        self,
        ctx: Context,
        rng: random.Random,
        scorer: Identity,
        learners: dict[str, Identity],
        course_ids: list[str],
    ) -> None:
        self.ctx = ctx
        self.rng = rng
        self.scorer = scorer
        self.learners = learners
        self.course_ids = course_ids
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def run(self) -> None:
        policy = self.ctx.oracle.policy
        users = sorted(self.learners)
        try:
            while not self.ctx.stop.is_set():
                if self.sent and self.rng.random() < 0.15:
                    user_id, body = self.rng.choice(self.sent)
                else:
                    user_id = self.rng.choice(users)
                    body = {"scoreIncrement": self.rng.randint(1, 200), "actionId": action_id(self.rng)}
                    course_id = self.rng.choice([None, *self.course_ids])
                    if course_id is not None:
                        body["courseId"] = course_id
                    if policy.score_writes == "scorer":
                        body["userId"] = user_id
                    self.sent.append((user_id, body))
                await self.award(user_id, body)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ctx.stop.wait(), self.rng.uniform(0.05, 0.4))
        except Unresolved as exc:
            self.ctx.recorder.violation(f"scorer: {exc}")

    async def award(self, user_id: str, body: dict[str, Any]) -> None:
        oracle = self.ctx.oracle
        region = oracle.learners[user_id].region
        write = oracle.write(
            body["actionId"], Write(user_id, body["scoreIncrement"], boards_now(region, body.get("courseId")))
        )
        identity = self.scorer if oracle.policy.score_writes == "scorer" else self.learners[user_id]
        self.ctx.recorder.actions += 1
        try:
            r = await identity.send("POST", "/api/v1/scores/update", "scores/update", body=body)
        except Unresolved:
            return
        if r.status_code in (200, 202):
            if write.outcome is Tri.MAYBE:
                write.outcome = Tri.YES
            status = r.json().get("status")
            if r.status_code == 202 and write.outcome is Tri.YES and status != "queued":
                self.ctx.recorder.violation(f"scores/update 202 with status {status}")
        else:
            if write.outcome is Tri.MAYBE:
                write.outcome = Tri.NO
            self.ctx.recorder.violation(f"scores/update for {user_id} answered {r.status_code} {r.text}")


# ---------------------------------------------------------------- board subscribers
class Subscriber:
    """Follows one board over SSE or WebSocket on one gateway; keeps the last frame it got."""

    def __init__(
        self, ctx: Context, identity: Identity, board: str, transport: str, gateway_url: str
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.board = board
        self.transport = transport
        self.gateway_url = gateway_url
        self.last: dict[str, Any] | None = None
        self.last_id: str | None = None
        self.frames = 0
        self.reconnects = 0
        self.done = asyncio.Event()

    def describe(self) -> str:
        return f"{self.transport} subscriber of {self.board} on {self.gateway_url}"

    async def run(self) -> None:
        attempt = 0
        while not self.done.is_set():
            try:
                if self.transport == "sse":
                    await self._sse()
                else:
                    await self._ws()
                attempt = 0
            except (httpx.HTTPError, OSError, ConnectionClosed, InvalidHandshake, TimeoutError, Unresolved):
                pass
            if self.done.is_set():
                return
            self.reconnects += 1
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    def _frame(self, data: dict[str, Any]) -> None:
        self.last = data
        self.frames += 1

    async def _sse(self) -> None:
        headers = {"authorization": f"Bearer {await self.identity.token()}"}
        if self.last_id is not None:
            headers["last-event-id"] = self.last_id
        async with (
            httpx.AsyncClient(base_url=self.gateway_url, timeout=httpx.Timeout(5.0, read=30.0)) as client,
            client.stream(
                "GET", "/api/v1/leaderboard/stream", params={"board": self.board}, headers=headers
            ) as response,
        ):
            start = time.monotonic()
            self.ctx.recorder.http("sse", response.status_code, start)
            if response.status_code != 200:
                if response.status_code != 503:
                    await response.aread()
                    self.ctx.recorder.violation(
                        f"{self.describe()}: answered {response.status_code} {response.text[:200]}"
                    )
                await asyncio.sleep(0.5)
                return
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if self.done.is_set():
                    return
                if not line:
                    if event.get("event") in ("snapshot", "update") and "data" in event:
                        self._frame(json.loads(event["data"]))
                        self.last_id = event.get("id", self.last_id)
                    elif event.get("event") == "reconnect":
                        return
                    event = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")

    async def _ws(self) -> None:
        token = await self.identity.token()
        async with connect(ws_url(self.gateway_url, token), open_timeout=5, close_timeout=1) as ws:
            started = time.monotonic()
            await ws.send(json.dumps({"type": "subscribe", "board": self.board}))
            keepalive = asyncio.create_task(self._keepalive(ws))
            try:
                async for raw in ws:
                    message: dict[str, Any] = json.loads(raw)
                    if message.get("type") == "leaderboard":
                        self._frame(message)
                    elif message.get("type") == "error":
                        code = str(message.get("code"))
                        self.ctx.recorder.ws_error(code, started, self.describe())
                        if code == "unavailable":  # the subscribe did not take: ask again
                            await asyncio.sleep(0.5)
                            await ws.send(json.dumps({"type": "subscribe", "board": self.board}))
                    elif message.get("type") == "reconnect":
                        return
                    if self.done.is_set():
                        return
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await keepalive

    async def _keepalive(self, ws: ClientConnection) -> None:
        """An application ping now and then: the gateway checks the token's expiry on each message,
        so an expired one ends the connection and the subscriber comes back with a fresh token."""
        while True:
            await asyncio.sleep(5.0)
            await ws.send(json.dumps({"type": "ping"}))
