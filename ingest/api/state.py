"""Shared runtime state of the ingest API, built by the lifespan and handed to endpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request

from contract.auth import Claims, TokenIssuer, TokenVerifier, token_from_request
from contract.errors import AuthError, Forbidden
from contract.settings import Settings
from ingest.api.client import Network
from ingest.api.users import KnownUsers
from store.boards import BoardStore
from store.clients import RedisClient
from store.courses import CourseCatalog
from store.progress import ProgressStore
from store.streams import BacklogGauge


@dataclasses.dataclass(kw_only=True)
class IngestState:
    settings: Settings
    redis: RedisClient
    mongo: Any  # pymongo AsyncDatabase
    boards: BoardStore
    issuer: TokenIssuer | None  # None: this deployment verifies tokens and never issues them
    verifier: TokenVerifier
    progress: ProgressStore
    catalog: CourseCatalog
    backlog: BacklogGauge
    users: KnownUsers
    trusted_proxies: tuple[Network, ...] = ()


def state(request: Request) -> IngestState:
    found: IngestState = request.app.state.ingest
    return found


async def authenticate(request: Request, *, role: str | tuple[str, ...] | None = None) -> Claims:
    """The verified claims of the request's token, which must hold ``role`` (one of them, for a
    tuple) when given; a learner seen for the first time is registered (``ingest.api.users``).
    Raises AuthError (401) or Forbidden (403, ``forbidden``)."""
    token = token_from_request(request.headers, request.query_params, request.cookies)
    if not token:
        raise AuthError("a bearer token is required", code="unauthorized")
    claims = state(request).verifier.verify(token)
    wanted = (role,) if isinstance(role, str) else role
    if wanted is not None and not any(claims.has_role(r) for r in wanted):
        raise Forbidden(f"role {' or '.join(map(repr, wanted))} required")
    await state(request).users.note(claims)
    return claims
