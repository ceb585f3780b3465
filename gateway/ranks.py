"""Who gets a ``rank`` event, when, and what it says — without sockets, Redis or an event loop.

A viewer (a user on a board, however many of their connections follow it) is one *pair*. The
:class:`RankPlanner` decides which pairs the gateway looks up in Redis, within one budget of
``lookups_per_s`` (a token bucket holding at most ``burst_s`` of lookups, so one late tick
cannot take a long run of the event loop) shared by two lanes:

- the own lane (:meth:`RankPlanner.plan_own`), asked as soon as a board event names viewers whose
  own score changed (:meth:`RankPlanner.changed` answers whether it did): those pairs alone, in
  the order they changed, without waiting for the next tick or behind its round-robin reads;
- the tick (:meth:`RankPlanner.plan`), every ``rank_tick_s``:

  1. pairs whose own score changed that the own lane left (budget, a failed read);
  2. pairs a connection just started to follow;
  3. then every other pair in turn (round-robin): each is read again within ``refresh_s`` of its
     last lookup (whatever caused it) — what catches viewers that other users passed. A turn
     comes due two ticks (``tick_s``) early: it may wait one to be planned, and its read and
     hand-over take up to another. The turns are paced at (pairs / that interval) per second,
     taken early from the front of the queue when none is due, so a crowd that arrived at once
     spreads out instead of coming due in one tick.

A pair is looked up once whatever the number of its connections. Each connection is sent a
place only when it differs from the last place that connection was sent on that board (the
board version alone changing is not news), and a connection that starts following a pair
whose place is known gets it without a lookup. :func:`rank_frames` encodes one place once for
both transports.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from contract.push import RankUpdate
from contract.wire import json_encoder

C = TypeVar("C", bound=Hashable)
Pair = tuple[str, str]  # (board, userId)


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """What a ``rank`` event says besides board and version (all None: not ranked)."""

    rank: int | None
    score: int | None
    gap_to_next: int | None

    @classmethod
    def of(cls, rank: int | None, score: int | None, above: int | None) -> Place:
        """The place of a member at ``rank`` with ``score``, ``above`` the score one rank up."""
        if rank is None or score is None:
            return UNRANKED
        return cls(rank=rank, score=score, gap_to_next=None if rank == 1 or above is None else above - score)


UNRANKED = Place(rank=None, score=None, gap_to_next=None)


@dataclasses.dataclass(frozen=True, slots=True)
class RankFrames:
    """One place encoded once: the SSE event (a ``bytes`` chunk body) and the WebSocket text."""

    board: str
    version: int
    place: Place
    sse: bytes
    ws_text: str


_WS_HEAD = '{"type":"rank",'


def rank_frames(board: str, version: int, place: Place) -> RankFrames:
    data = json_encoder.encode(
        RankUpdate(
            board=board, version=version, rank=place.rank, score=place.score, gap_to_next=place.gap_to_next
        )
    )
    # No ``id:`` line: the SSE id is the board version of the shared frames (Last-Event-ID).
    sse = b"event: rank\ndata: " + data + b"\n\n"
    # The WebSocket message (RankMessage) is the same object with its tag first: spliced, not
    # encoded again (a tick may hand over thousands).
    ws_text = _WS_HEAD + data[1:].decode()
    return RankFrames(board=board, version=version, place=place, sse=sse, ws_text=ws_text)


class _Viewer(Generic[C]):
    __slots__ = ("conns", "due", "looked_up", "place", "version")

    def __init__(self) -> None:
        # Each connection with the last place it was sent (None: nothing yet).
        self.conns: dict[C, Place | None] = {}
        self.place: Place | None = None  # the last place looked up
        self.version = 0
        self.looked_up = -math.inf
        self.due = math.inf  # when its round-robin turn comes (set by its first lookup)


class RankPlanner(Generic[C]):
    """The rank bookkeeping of one gateway. ``now`` arguments are monotonic seconds."""

    def __init__(
        self,
        *,
        lookups_per_s: float,
        refresh_s: float,
        tick_s: float = 0.0,
        burst_s: float = 0.5,
        now: float = 0.0,
    ) -> None:
        self.lookups_per_s = lookups_per_s
        self.burst = lookups_per_s * burst_s
        self.refresh_s = refresh_s
        # A pair's turn: due this long after its lookup, so that with the wait for a tick and the
        # tick's read and hand-over its new place is out within refresh_s.
        self.turn_s = max(tick_s, refresh_s - 2 * tick_s)
        self.viewers: dict[Pair, _Viewer[C]] = {}
        # Ordered sets: first asked, first looked up.
        self._own: dict[Pair, None] = {}  # own score changed
        self._new: dict[Pair, None] = {}  # just followed, place unknown
        self._replay: dict[Pair, None] = {}  # pairs with a connection waiting for a known place
        # (due, pair), stale entries included (skipped and dropped as they surface).
        self._turns: list[tuple[float, Pair]] = []
        self._turn_credit = 0.0
        self._turns_at = now  # when the turn credit was last added to
        self._tokens = self.burst
        self._tokens_at = now  # when the bucket was last filled

    @property
    def enabled(self) -> bool:
        return self.lookups_per_s > 0

    @property
    def backlog(self) -> int:
        """Pairs whose own change (or first place) waits for budget."""
        return len(self._own) + len(self._new)

    # ------------------------------------------------------------ who follows what
    def follow(self, conn: C, board: str, user_id: str) -> None:
        """``conn`` (of ``user_id``; "" = anonymous, never ranked) now follows ``board``."""
        if not self.enabled or not user_id:
            return
        pair = (board, user_id)
        viewer = self.viewers.get(pair)
        if viewer is None:
            viewer = self.viewers[pair] = _Viewer()
            self._new[pair] = None
        viewer.conns[conn] = None
        if viewer.place is not None:
            self._replay[pair] = None

    def unfollow(self, conn: C, board: str, user_id: str) -> None:
        pair = (board, user_id)
        viewer = self.viewers.get(pair)
        if viewer is None or viewer.conns.pop(conn, 0) == 0:
            return
        if not viewer.conns:
            del self.viewers[pair]
            self._own.pop(pair, None)
            self._new.pop(pair, None)
            self._replay.pop(pair, None)
            # Its round-robin entry is dropped when it surfaces.

    def changed(self, board: str, user_ids: Iterable[str]) -> bool:
        """These users' scores on ``board`` changed: look them up first. Answers whether any of
        them views ``board`` here (then :meth:`plan_own` has work)."""
        queued = False
        for user_id in user_ids:
            pair = (board, user_id)
            if pair in self.viewers:
                self._own[pair] = None
                queued = True
        return queued

    # ------------------------------------------------------------ the lanes
    def _fill(self, now: float) -> int:
        """Refill the bucket up to ``now``; the whole lookups it holds."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._tokens_at) * self.lookups_per_s)
        self._tokens_at = max(self._tokens_at, now)
        return int(self._tokens)

    def plan_own(self, now: float) -> dict[str, list[str]]:
        """The own lane: the pairs whose own score changed, {board: [userId, ...]}, as far as the
        budget allows now (the rest wait for the next tick, which takes them first). Like
        :meth:`plan`, each planned pair counts as looked up at ``now``."""
        budget = self._fill(now)
        lookups: dict[str, list[str]] = {}
        chosen = 0
        while self._own and chosen < budget:
            pair = next(iter(self._own))
            del self._own[pair]
            self._new.pop(pair, None)
            chosen += self._take(pair, now, lookups)
        self._tokens -= chosen
        return lookups

    def plan(self, now: float) -> dict[str, list[str]]:
        """The lookups of this tick, {board: [userId, ...]}, within the budget; each planned
        pair counts as looked up at ``now`` (its result is expected through :meth:`looked_up`)."""
        budget = self._fill(now)
        elapsed = max(0.0, now - self._turns_at)
        self._turns_at = max(self._turns_at, now)
        lookups: dict[str, list[str]] = {}
        chosen = 0
        for urgent in (self._own, self._new):
            while urgent and chosen < budget:
                pair = next(iter(urgent))
                del urgent[pair]
                self._new.pop(pair, None)
                chosen += self._take(pair, now, lookups)
        # Round-robin: every due pair, and early ones while the pace allows. Each turn costs a
        # credit (due ones even without: the credit goes negative and early turns wait), so
        # over time the turns average (pairs / turn_s) per second.
        self._turn_credit = min(
            float(len(self.viewers)), self._turn_credit + len(self.viewers) * elapsed / self.turn_s
        )
        turns = self._turns
        while turns and chosen < budget:
            due, pair = turns[0]
            viewer = self.viewers.get(pair)
            if viewer is None or viewer.due != due:
                heapq.heappop(turns)  # unfollowed, or looked up since: a stale entry
                continue
            if viewer.looked_up == now or (due > now and self._turn_credit < 1):
                break  # the rest was looked up in this tick, or is not due yet
            heapq.heappop(turns)
            self._turn_credit -= 1
            chosen += self._take(pair, now, lookups)
        if len(turns) > 2 * len(self.viewers) + 64:
            self._turns = [(v.due, pair) for pair, v in self.viewers.items() if v.due != math.inf]
            heapq.heapify(self._turns)
        self._tokens -= chosen
        return lookups

    def _take(self, pair: Pair, now: float, lookups: dict[str, list[str]]) -> int:
        viewer = self.viewers.get(pair)
        if viewer is None or viewer.looked_up == now:
            return 0
        viewer.looked_up = now
        viewer.due = now + self.turn_s
        heapq.heappush(self._turns, (viewer.due, pair))
        lookups.setdefault(pair[0], []).append(pair[1])
        return 1

    def retry(self, lookups: dict[str, list[str]]) -> None:
        """Planned lookups that failed: asked again first by the next tick (the budget still
        paces them; the own lane is not woken for them, so an outage is not read in a loop)."""
        for board, user_ids in lookups.items():
            for user_id in user_ids:
                pair = (board, user_id)
                viewer = self.viewers.get(pair)
                if viewer is not None:
                    viewer.looked_up = -math.inf  # its stale turn stays due: harmless
                    self._own[pair] = None

    def looked_up(
        self, board: str, version: int, places: dict[str, Place]
    ) -> list[tuple[RankFrames, list[C]]]:
        """Lookup results: the frames to send and the connections each goes to (those whose
        last sent place differs). Marks them sent."""
        out = []
        for user_id, place in places.items():
            viewer = self.viewers.get((board, user_id))
            if viewer is None or version < viewer.version:
                continue  # unfollowed meanwhile, or an older read than one already applied
            viewer.place, viewer.version = place, version
            self._replay.pop((board, user_id), None)
            frames = self._deliver(board, viewer)
            if frames is not None:
                out.append(frames)
        return out

    def replays(self) -> list[tuple[RankFrames, list[C]]]:
        """Known places for connections that just started following (no lookup needed)."""
        out = []
        for board, user_id in self._replay:
            viewer = self.viewers[(board, user_id)]
            frames = self._deliver(board, viewer)
            if frames is not None:
                out.append(frames)
        self._replay.clear()
        return out

    @staticmethod
    def _deliver(board: str, viewer: _Viewer[C]) -> tuple[RankFrames, list[C]] | None:
        place = viewer.place
        assert place is not None
        targets = [conn for conn, sent in viewer.conns.items() if sent != place]
        if not targets:
            return None
        for conn in targets:
            viewer.conns[conn] = place
        return rank_frames(board, viewer.version, place), targets
