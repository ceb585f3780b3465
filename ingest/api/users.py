"""Who Scorecast knows: a learner's profile is registered from their token the first time this
process sees it, so a scoring service can name any learner who has used Scorecast.

The profile (display name, avatar, region) is what boards show and where a score lands: the
region board of the SCORED user. With the development login it is written at login; with tokens
from a real identity provider there is no login here, so the first authenticated request of a
learner writes the same two things (the Redis profile cache and MongoDB ``users``), once per
process and user (a bounded memory of who was registered; a repeat is harmless, it rewrites the
same values).
"""

from __future__ import annotations

from typing import Any

from contract.auth import Claims
from ingest import store
from store.board_results import Profile
from store.boards import BoardStore

# Service identities are not learners: they are never placed on a board.
SERVICE_ROLES = ("scorer", "admin")


class KnownUsers:
    def __init__(self, boards: BoardStore, mongo: Any, *, ttl_s: int, max_remembered: int = 100_000) -> None:
        self.boards = boards
        self.mongo = mongo
        self.ttl_s = ttl_s
        self.max_remembered = max_remembered
        self._registered: dict[str, None] = {}  # insertion-ordered: the oldest is forgotten first

    async def note(self, claims: Claims) -> None:
        """Register the learner of ``claims`` unless this process already did (services never).

        Raises what Redis or MongoDB raise (the request then answers 503: nothing was accepted).
        """
        if claims.sub in self._registered or any(claims.has_role(r) for r in SERVICE_ROLES):
            return
        await self.register(claims)

    async def register(self, claims: Claims) -> None:
        """Write the profile of ``claims`` (the Redis cache and MongoDB ``users``), always: the
        development login calls this for every login, whose name or region may have changed.

        Raises what Redis or MongoDB raise.
        """
        region = claims.region.upper() if claims.region else None
        profile = Profile(name=claims.name, avatar_url=claims.avatar_url, region=region)
        await self.boards.cache_profiles({claims.sub: profile}, ttl_s=self.ttl_s)
        await self.mongo[store.USERS].update_one(
            {"_id": claims.sub},
            {"$set": {**store.user_doc(claims.name, claims.avatar_url, region), "tz": claims.tz}},
            upsert=True,
        )
        self._registered[claims.sub] = None
        if len(self._registered) > self.max_remembered:
            del self._registered[next(iter(self._registered))]
