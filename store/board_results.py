"""What the board store answers: the status of an applied step, ranked rows, a top, the window
around a user, standings, a closed board's final standings, and cached display profiles.

The statuses are the apply script's replies (:mod:`store.board_lua`); :class:`ApplyResult`
carries one. A board that is missing in Redis (see :mod:`store.boards`) reads as
``exists=False``.
"""

from __future__ import annotations

import dataclasses

APPLIED, ALREADY_APPLIED, MISSING = 1, 0, -1
# A period board that closed (see ingest.seasons): its standings are final, the step changes nothing.
CLOSED = -2


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyResult:
    board: str
    status: int
    total: int
    seq: int
    # The total the action reached when it was applied: ``total`` for APPLIED; for
    # ALREADY_APPLIED what its guard remembers (None when a rebuild counted it).
    reached: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One ranked member: rank is 1-based."""

    rank: int
    user_id: str
    score: int


@dataclasses.dataclass(frozen=True, slots=True)
class Top:
    board: str
    version: int
    rows: list[Row]
    exists: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Final:
    """A closed board's standings: its top rows and how many users it ranked."""

    board: str
    version: int
    ranked: int
    rows: list[Row]


@dataclasses.dataclass(frozen=True, slots=True)
class Around:
    board: str
    version: int
    exists: bool
    self_row: Row | None
    above: list[Row]
    below: list[Row]


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """A user's place on a board: 1-based rank, score, and the score of the member one rank up
    (None at #1). All None while the user is not ranked."""

    rank: int | None
    score: int | None
    above: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Standings:
    """The places of several users on one board, read atomically at ``version``.

    ``unread``: on a Redis Cluster, the users of a call whose node did not answer (a master down,
    its slots moving): no places then; ask again later. Empty otherwise.
    """

    board: str
    version: int
    exists: bool
    places: dict[str, Standing]
    unread: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A member's display details, and the region whose board their scores go to."""

    name: str
    avatar_url: str | None
    region: str | None = None
