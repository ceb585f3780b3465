"""JWT issue and verification, with the algorithm pinned.

Access tokens carry ``sub`` (userId), ``name``, ``region``, ``roles``, ``exp``, ``iat``, ``jti``,
audience ``scorecast`` and ``typ: "access"``. Refresh tokens are JWTs with ``typ: "refresh"``;
their single use is enforced by the ingest API (a Redis record per ``jti``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import msgspec

from contract.errors import AuthError, BadRequest
from contract.settings import Settings
from contract.wire import Id

COOKIE_NAME = "scorecast_token"
QUERY_PARAM = "access_token"


class Claims(msgspec.Struct, frozen=True):
    # A user id: it goes into Redis hash tags and Lua arguments, so ``}`` or a control
    # character from another issuer must not get through (AuthError ``invalid_token``).
    sub: Id
    name: str
    exp: int
    iat: int
    jti: str
    region: str | None = None
    roles: list[str] = []
    avatar_url: str | None = None
    tz: str = "UTC"  # IANA zone: the day boundary of streaks and the heatmap
    typ: str = "access"

    def has_role(self, role: str) -> bool:
        return role in self.roles


def _keys(settings: Settings) -> tuple[Any, Any]:
    """Return (signing key, verifying key) for the configured algorithm."""
    if settings.jwt_algorithm == "HS256":
        if len(settings.jwt_secret) < 32:
            raise BadRequest("JWT_SECRET must be set to at least 32 characters for HS256")
        return settings.jwt_secret, settings.jwt_secret
    if settings.jwt_algorithm == "RS256":
        public = Path(settings.jwt_public_key_file).read_text() if settings.jwt_public_key_file else None
        private = Path(settings.jwt_private_key_file).read_text() if settings.jwt_private_key_file else None
        if public is None:
            raise BadRequest("JWT_PUBLIC_KEY_FILE must be set for RS256")
        return private, public
    raise BadRequest(f"unsupported JWT_ALGORITHM {settings.jwt_algorithm!r}: use HS256 or RS256")


class TokenVerifier:
    """Verifies signature, expiry, audience, issuer (``iss`` must equal ``jwt_issuer``) and the
    form of ``sub`` (a user id); rejects every other algorithm.

    A token that verified is remembered (at most ``cache_size``, the oldest forgotten first), so
    a client sending the same token on every request pays for the signature check once; only
    its expiry, the one verdict that changes with time, is checked again on each use.
    """

    def __init__(self, settings: Settings, *, cache_size: int = 4096) -> None:
        _, self._key = _keys(settings)
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._verified: dict[str, Claims] = {}
        self._cache_size = cache_size

    def verify(self, token: str, *, typ: str = "access") -> Claims:
        """Return the claims of a valid token of kind ``typ``.

        Raises AuthError with code ``token_expired`` or ``invalid_token``.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= self._cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        elif claims.exp <= time.time():
            raise AuthError("token expired", code="token_expired")
        if claims.typ != typ:
            raise AuthError(f"expected a {typ} token", code="invalid_token")
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", code="token_expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}", code="invalid_token") from None
        payload.pop("aud", None)
        payload.pop("iss", None)
        try:
            claims = msgspec.convert(payload, Claims)
        except msgspec.ValidationError as exc:
            raise AuthError(f"invalid token claims: {exc}", code="invalid_token") from None
        return claims


class TokenIssuer:
    """Signs access and refresh tokens. Needs the private key (RS256) or the secret (HS256)."""

    @classmethod
    def optional(cls, settings: Settings) -> TokenIssuer | None:
        """The issuer, or None when the settings can verify tokens but not sign them (RS256 with
        the public key only: production, where the identity provider issues every token).

        Raises BadRequest when the settings cannot even verify tokens.
        """
        signing, _ = _keys(settings)
        return None if signing is None else cls(settings)

    def __init__(self, settings: Settings) -> None:
        self._key, _ = _keys(settings)
        if self._key is None:
            raise BadRequest("JWT_PRIVATE_KEY_FILE must be set to issue RS256 tokens")
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self.access_ttl_s = settings.access_token_ttl_s
        self.refresh_ttl_s = settings.refresh_token_ttl_s

    def _sign(self, claims: dict[str, Any], ttl_s: int) -> tuple[str, str]:
        now = int(time.time())
        jti = uuid.uuid4().hex
        payload = {
            **claims,
            "iat": now,
            "exp": now + ttl_s,
            "jti": jti,
            "aud": self._audience,
            "iss": self._issuer,
        }
        return jwt.encode(payload, self._key, algorithm=self._algorithm), jti

    def access_token(
        self,
        *,
        user_id: str,
        name: str,
        region: str | None = None,
        roles: list[str] | None = None,
        avatar_url: str | None = None,
        tz: str = "UTC",
    ) -> str:
        claims: dict[str, Any] = {"sub": user_id, "name": name, "roles": roles or [], "typ": "access"}
        if tz != "UTC":
            claims["tz"] = tz
        if region:
            claims["region"] = region
        if avatar_url:
            claims["avatar_url"] = avatar_url
        return self._sign(claims, self.access_ttl_s)[0]

    def refresh_token(self, claims: Claims) -> tuple[str, str]:
        """Return (token, jti) of a refresh token that carries the same identity."""
        body = msgspec.to_builtins(claims)
        for key in ("exp", "iat", "jti"):
            body.pop(key, None)
        body["typ"] = "refresh"
        return self._sign(body, self.refresh_ttl_s)


def token_from_request(
    headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]
) -> str | None:
    """The bearer token of a request: header first, then query parameter, then cookie."""
    header = headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return query.get(QUERY_PARAM) or cookies.get(COOKIE_NAME) or None
