"""Which boards clients may follow, and following one within a bounded time.

Every followed board costs a gateway a loop, a cache entry and a Pub/Sub channel, and Redis a
version key and possibly a rebuild: so only boards that exist can be followed (see
``contract.boards.followable``; a ``course:`` board needs its course in the catalog), and a
subscribe that cannot be served (Redis down) is answered ``unavailable`` after
``subscribe_timeout_s`` instead of waiting for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from contract.boards import course_of, followable, regions_of
from contract.errors import Unavailable, UnknownBoard
from contract.settings import Settings
from gateway.connection import Connection
from gateway.hub import Hub, utc_now
from gateway.protocol import BoardFrames
from store.courses import CourseCatalog

log = logging.getLogger("scorecast.gateway.policy")


class BoardPolicy:
    def __init__(
        self, settings: Settings, catalog: CourseCatalog, *, now: Callable[[], dt.datetime] = utc_now
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.regions = regions_of(settings.board_regions)
        self.now = now  # the hub's clock: which period ``weekly``/``monthly`` name

    def name(self, raw: str) -> str:
        """The canonical board ``raw`` names, as far as the name alone tells (no I/O).

        Raises BoardNameError (malformed) or UnknownBoard (no such region, a period too old or
        to come).
        """
        s = self.settings
        return followable(
            raw,
            regions=self.regions,
            weeks_back=s.board_weeks_back,
            months_back=s.board_months_back,
            now=self.now(),
        )

    async def follow(
        self, hub: Hub, conn: Connection, board: str, *, alias: str | None = None
    ) -> BoardFrames:
        """Subscribe ``conn`` to the canonical ``board`` and return its current frames. With
        ``alias`` (``weekly``/``monthly``: the client named the period so), the hub moves ``conn``
        to the next period when this one ends.

        Raises UnknownBoard for a course that does not exist, Unavailable when the catalog or the
        board cannot be read within ``subscribe_timeout_s`` or this gateway follows as many boards
        as it may (``gateway_max_boards``). On any error ``conn`` is not subscribed.
        """
        try:
            async with asyncio.timeout(self.settings.subscribe_timeout_s):
                await self._exists(board)
                frames = await hub.subscribe(conn, board)
        except TimeoutError:
            raise Unavailable(f"board {board} cannot be read right now; retry later") from None
        if alias is not None:
            conn.aliases[board] = alias
        return frames

    async def _exists(self, board: str) -> None:
        course_id = course_of(board)
        if course_id is None:
            return
        try:
            meta = await self.catalog.get(course_id)
        except Exception:
            log.warning("course lookup for %s failed", board, exc_info=True)
            raise Unavailable("the course catalog cannot be read right now; retry later") from None
        if meta is None:
            raise UnknownBoard(f"no course {course_id!r}")
