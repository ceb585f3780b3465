"""Development login and single-use refresh tokens.

``POST /api/v1/auth/login`` is the development identity provider: off unless
``DEV_LOGIN_ENABLED`` (production verifies tokens of the real identity provider and never
issues them here). A refresh token works once: its ``jti`` is recorded in Redis at issue and
removed atomically (GETDEL) at use. A deployment without a signing key (RS256 with the public
key only) issues nothing: both endpoints answer 404 ``token_issuer_disabled``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract import keys
from contract.auth import Claims, TokenIssuer
from contract.bodies import LoginRequest, RefreshRequest, TokenPair
from contract.errors import AuthError, NotFound
from contract.http import JSONResponse, decode_body
from contract.streaks import zone
from ingest.api.state import IngestState, state


def issuer_of(st: IngestState) -> TokenIssuer:
    """The token issuer. Raises NotFound (``token_issuer_disabled``) when there is none."""
    if st.issuer is None:
        raise NotFound(
            "this deployment does not issue tokens (no JWT_PRIVATE_KEY_FILE): "
            "get and refresh them from the identity provider",
            code="token_issuer_disabled",
        )
    return st.issuer


async def issue_pair(st: IngestState, claims: Claims) -> TokenPair:
    issuer = issuer_of(st)
    access = issuer.access_token(
        user_id=claims.sub,
        name=claims.name,
        region=claims.region,
        roles=list(claims.roles),
        avatar_url=claims.avatar_url,
        tz=claims.tz,
    )
    refresh, jti = issuer.refresh_token(claims)
    await st.redis.set(keys.refresh_token(jti), claims.sub, ex=issuer.refresh_ttl_s)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=issuer.access_ttl_s)


async def login(request: Request) -> Response:
    st = state(request)
    if not st.settings.dev_login_enabled:
        raise NotFound("development login is disabled")
    issuer_of(st)  # before any write: a login that cannot get its tokens changes nothing
    body = await decode_body(request, LoginRequest, max_bytes=st.settings.max_body_bytes)
    zone(body.time_zone)
    region = body.region.upper() if body.region else None
    claims = Claims(
        sub=body.user_id,
        name=body.name,
        exp=0,
        iat=0,
        jti="",
        region=region,
        roles=list(body.roles),
        avatar_url=body.avatar_url,
        tz=body.time_zone,
    )
    await st.users.register(claims)
    return JSONResponse(await issue_pair(st, claims))


async def refresh(request: Request) -> Response:
    st = state(request)
    issuer_of(st)  # before the refresh token is used up
    body = await decode_body(request, RefreshRequest, max_bytes=st.settings.max_body_bytes)
    claims = st.verifier.verify(body.refresh_token, typ="refresh")
    if await st.redis.getdel(keys.refresh_token(claims.jti)) is None:
        raise AuthError("refresh token already used or revoked", code="invalid_token")
    return JSONResponse(await issue_pair(st, claims))


routes: list[BaseRoute] = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/refresh", refresh, methods=["POST"]),
]
