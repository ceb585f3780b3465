"""Anomaly flags: rules over applied score actions, evaluated by the worker, and blocks.

Rules (tunables in ``contract.settings``, ``flag_*``):

- ``jump``: an increment above ``flag_jump_factor`` x the user's own norm (mean of their last
  ``flag_norm_samples`` increments) AND x the board's (mean of the last
  ``flag_board_norm_samples`` increments of anyone), and at least ``flag_jump_min_increment``.
  A user without history is held against the board's norm alone; with no norm at all nothing
  is judged.
- ``burst``: more than ``flag_burst_actions`` applied actions of one user within
  ``flag_burst_window_s`` (by the actions' times, so a redelivered batch counts nothing twice).
- ``quiz_too_fast``: a quiz submitted sooner after it was fetched than
  ``flag_quiz_min_ms_per_question`` per question (the ingest API measures it on its own clock
  from the fetch's start record; see ``ingest.api.quiz``).
- ``coverage_too_fast``: a lecture completed sooner after its first watched second than its
  covered seconds, less the coverage rules' ``coverage_slack_s``, allow at
  ``flag_coverage_max_rate`` (the completion's ``covered_s`` and ``watch_ms``, from the
  achievement consumer).

:class:`Rules` is the I/O-free judgement; :class:`AnomalyDetector` keeps the norms and windows
in Redis (per-user keys share the user's hash tag) and writes a hit to MongoDB's ``flags`` as
one document per user, rule and ``flag_window_s`` window (``$setOnInsert`` on ``_id``: no
flood, nothing twice on a retry). With ``flag_block_s`` > 0 a flag also blocks the user from
scoring until its ``blockedUntilMs``: the Redis key ``block:{user:<id>}`` (TTL) that the ingest
API checks, re-set from the open flags on a retry, removed by an admin's clear.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from pymongo import UpdateOne

from contract import keys
from contract.events import ScoreAction
from contract.settings import Settings
from ingest import store

log = logging.getLogger("scorecast.anomaly")

JUMP, BURST, QUIZ_TOO_FAST, COVERAGE_TOO_FAST = "jump", "burst", "quiz_too_fast", "coverage_too_fast"
RULES = (JUMP, BURST, QUIZ_TOO_FAST, COVERAGE_TOO_FAST)
OPEN, CLEARED = "open", "cleared"

Evidence = dict[str, str | int | float | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    user_id: str
    rule: str
    evidence: Evidence
    ts_ms: int


def mean(values: Sequence[int]) -> float | None:
    return sum(values) / len(values) if values else None


class Rules:
    """The rules' judgement, without I/O."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def jump(self, increment: int, user_norm: Sequence[int], board_norm: Sequence[int]) -> Evidence | None:
        board_mean = mean(board_norm)
        if board_mean is None or increment < self.s.flag_jump_min_increment:
            return None
        user_mean = mean(user_norm)
        bar = self.s.flag_jump_factor * max(board_mean, user_mean if user_mean is not None else 0.0)
        if increment <= bar:
            return None
        return {
            "increment": increment,
            "userMean": round(user_mean, 2) if user_mean is not None else None,
            "boardMean": round(board_mean, 2),
            "factor": self.s.flag_jump_factor,
        }

    def burst(self, actions_in_window: int) -> Evidence | None:
        if actions_in_window <= self.s.flag_burst_actions:
            return None
        return {
            "actions": actions_in_window,
            "windowS": self.s.flag_burst_window_s,
            "max": self.s.flag_burst_actions,
        }

    def quiz_too_fast(self, elapsed_ms: int | None, questions: int | None) -> Evidence | None:
        if elapsed_ms is None or not questions:
            return None
        minimum = self.s.flag_quiz_min_ms_per_question * questions
        if elapsed_ms >= minimum:
            return None
        return {"elapsedMs": elapsed_ms, "questions": questions, "minimumMs": minimum}

    def coverage_too_fast(self, covered_s: float | None, watch_ms: int | None) -> Evidence | None:
        if covered_s is None or watch_ms is None:
            return None
        # The coverage rules grant coverage_slack_s beyond the rate (ping jitter): so does this.
        minimum = int(max(0.0, covered_s - self.s.coverage_slack_s) * 1000 / self.s.flag_coverage_max_rate)
        if watch_ms >= minimum:
            return None
        return {"coveredS": covered_s, "watchMs": watch_ms, "minimumMs": minimum}

    def evaluate(
        self,
        actions: Sequence[ScoreAction],
        user_norms: dict[str, list[int]],
        board_norm: list[int],
        windows: dict[str, list[int]],
    ) -> list[Hit]:
        """Hits of ``actions`` in order. ``user_norms`` (newest first) and ``board_norm`` grow by
        each judged increment; ``windows`` holds each user's action times (ms) in the burst
        window, these actions' included."""
        hits: list[Hit] = []
        window_ms = int(self.s.flag_burst_window_s * 1000)
        for a in actions:
            found: list[tuple[str, Evidence | None]] = [
                (JUMP, self.jump(a.increment, user_norms.setdefault(a.user_id, []), board_norm)),
                (
                    BURST,
                    self.burst(
                        sum(1 for t in windows.get(a.user_id, []) if a.ts_ms - window_ms < t <= a.ts_ms)
                    ),
                ),
            ]
            if a.source == "quiz":
                found.append((QUIZ_TOO_FAST, self.quiz_too_fast(a.quiz_elapsed_ms, a.quiz_questions)))
            if a.source == "completion":
                found.append((COVERAGE_TOO_FAST, self.coverage_too_fast(a.covered_s, a.watch_ms)))
            for rule, evidence in found:
                if evidence is not None:
                    hits.append(Hit(a.user_id, rule, {**evidence, "actionId": a.action_id}, a.ts_ms))
            user_norms[a.user_id].insert(0, a.increment)
            del user_norms[a.user_id][self.s.flag_norm_samples :]
            board_norm.insert(0, a.increment)
            del board_norm[self.s.flag_board_norm_samples :]
        return hits


class AnomalyDetector:
    """Keeps the rules' state in Redis and records hits (flags, blocks) in MongoDB and Redis."""

    def __init__(self, *, redis: Any, db: Any, settings: Settings) -> None:
        self.redis = redis
        self.db = db
        self.settings = settings
        self.rules = Rules(settings)

    async def observe(self, actions: Sequence[ScoreAction]) -> list[Hit]:
        """Judge applied ``actions`` (idempotent per actionId for the burst window) and record hits."""
        if not actions:
            return []
        s = self.settings
        window_ms = int(s.flag_burst_window_s * 1000)
        users = sorted({a.user_id for a in actions})
        pipe = self.redis.pipeline(transaction=False)
        for user_id in users:
            mine = {a.action_id: a.ts_ms for a in actions if a.user_id == user_id}
            key = keys.recent_actions(user_id)
            pipe.zadd(key, mine)
            pipe.zremrangebyscore(key, "-inf", f"({min(mine.values()) - window_ms}")
            pipe.pexpire(key, window_ms + 60_000)
            pipe.zrangebyscore(key, "-inf", "+inf", withscores=True)
            pipe.lrange(keys.recent_increments(user_id), 0, s.flag_norm_samples - 1)
        pipe.lrange(keys.BOARD_INCREMENTS, 0, s.flag_board_norm_samples - 1)
        replies = await pipe.execute()
        windows: dict[str, list[int]] = {}
        user_norms: dict[str, list[int]] = {}
        for i, user_id in enumerate(users):
            windows[user_id] = [int(score) for _, score in replies[i * 5 + 3]]
            user_norms[user_id] = [int(v) for v in replies[i * 5 + 4]]
        board_norm = [int(v) for v in replies[-1]]
        hits = self.rules.evaluate(actions, user_norms, board_norm, windows)

        pipe = self.redis.pipeline(transaction=False)
        for user_id in users:
            key = keys.recent_increments(user_id)
            pipe.delete(key)
            pipe.rpush(key, *user_norms[user_id])
            pipe.expire(key, s.flag_window_s * 24)
        pipe.delete(keys.BOARD_INCREMENTS)
        pipe.rpush(keys.BOARD_INCREMENTS, *board_norm)
        await pipe.execute()
        if hits:
            await self.record(hits)
        return hits

    async def record(self, hits: Sequence[Hit]) -> None:
        """One flag per user, rule and window; blocks (when enabled) from the open flags."""
        s = self.settings
        now_ms = int(time.time() * 1000)
        block_ms = s.flag_block_s * 1000
        window_ms = s.flag_window_s * 1000
        ids: dict[str, Hit] = {}
        for h in hits:  # the first hit of a window is its evidence
            ids.setdefault(f"{h.user_id}|{h.rule}|{h.ts_ms // window_ms}", h)
        doc: dict[str, Any]
        ops = []
        for flag_id, h in ids.items():
            doc = {
                "userId": h.user_id,
                "rule": h.rule,
                "evidence": h.evidence,
                "tsMs": h.ts_ms,
                "status": OPEN,
            }
            if block_ms > 0:
                doc["blockedUntilMs"] = now_ms + block_ms
            ops.append(UpdateOne({"_id": flag_id}, {"$setOnInsert": doc}, upsert=True))
        result = await self.db[store.FLAGS].bulk_write(ops, ordered=False)
        for index in result.upserted_ids or {}:
            h = list(ids.values())[index]
            log.warning("flag %s raised for user %s: %s", h.rule, h.user_id, h.evidence)
        if block_ms <= 0:
            return
        # Re-read rather than trust "upserted": a retry after a crash between the flag and its
        # block finds the flag already there and must still set the block.
        until: dict[str, int] = {}
        async for d in self.db[store.FLAGS].find(
            {"_id": {"$in": list(ids)}, "status": OPEN}, {"userId": 1, "blockedUntilMs": 1}
        ):
            end = int(d.get("blockedUntilMs") or 0)
            if end > now_ms:
                until[d["userId"]] = max(until.get(d["userId"], 0), end)
        if until:
            pipe = self.redis.pipeline(transaction=False)
            for user_id, end in until.items():
                pipe.set(keys.score_block(user_id), end, px=end - now_ms)
            await pipe.execute()


async def blocked_until(redis: Any, user_id: str) -> int | None:
    """The end (epoch ms) of the user's block from scoring, or None."""
    raw = await redis.get(keys.score_block(user_id))
    if raw is None:
        return None
    end = int(raw)
    return end if end > time.time() * 1000 else None


async def clear(redis: Any, db: Any, user_id: str, *, by: str) -> int:
    """Lift the user's block and mark their open flags cleared. Returns how many were open."""
    await redis.delete(keys.score_block(user_id))
    result = await db[store.FLAGS].update_many(
        {"userId": user_id, "status": OPEN},
        {"$set": {"status": CLEARED, "clearedAtMs": int(time.time() * 1000), "clearedBy": by}},
    )
    return int(result.modified_count)
