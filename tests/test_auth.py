"""JWT: every bad token kind is refused with 401 and the error shape; refresh tokens work once."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from contract.auth import Claims, TokenIssuer, TokenVerifier
from contract.errors import AuthError
from contract.settings import Settings
from ingest.api.app import create_app
from tests.conftest import TEST_SECRET
from tests.helpers import asgi_client, bearer, login, scorer_token


def score_body(user_id: str = "eve") -> dict[str, Any]:
    return {"userId": user_id, "scoreIncrement": 5, "actionId": str(uuid.uuid4())}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "eve",
        "name": "Eve",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "aud": "scorecast",
        "iss": "scorecast-dev",
        "typ": "access",
    }
    base.update(overrides)
    return base


def tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def bad_tokens(issuer: TokenIssuer) -> dict[str, str]:
    good = issuer.access_token(user_id="eve", name="Eve")
    refresh, _ = issuer.refresh_token(Claims(sub="eve", name="Eve", exp=0, iat=0, jti=""))
    return {
        "alg_none": jwt.encode(claims(), None, algorithm="none"),
        "wrong_key": jwt.encode(claims(), "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode(claims(exp=int(time.time()) - 10), TEST_SECRET, algorithm="HS256"),
        "tampered": tampered(good),
        "wrong_audience": jwt.encode(claims(aud="someone-else"), TEST_SECRET, algorithm="HS256"),
        "no_expiry": jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"}, TEST_SECRET, algorithm="HS256"
        ),
        "refresh_as_access": refresh,
        "garbage": "not-a-jwt",
        "wrong_issuer": jwt.encode(claims(iss="someone-else"), TEST_SECRET, algorithm="HS256"),
        "no_issuer": jwt.encode(
            {k: v for k, v in claims().items() if k != "iss"}, TEST_SECRET, algorithm="HS256"
        ),
        "sub_with_brace": jwt.encode(claims(sub="eve}x"), TEST_SECRET, algorithm="HS256"),
        "sub_with_control": jwt.encode(claims(sub="eve\nx"), TEST_SECRET, algorithm="HS256"),
        "sub_too_long": jwt.encode(claims(sub="e" * 65), TEST_SECRET, algorithm="HS256"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "alg_none",
        "wrong_key",
        "expired",
        "tampered",
        "wrong_audience",
        "no_expiry",
        "refresh_as_access",
        "garbage",
        "wrong_issuer",
        "no_issuer",
        "sub_with_brace",
        "sub_with_control",
        "sub_too_long",
    ],
)
async def test_bad_tokens_are_refused(ingest: httpx.AsyncClient, issuer: TokenIssuer, kind: str) -> None:
    token = bad_tokens(issuer)[kind]
    r = await ingest.post("/api/v1/scores/update", json=score_body(), headers=bearer(token))
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == ("token_expired" if kind == "expired" else "invalid_token")
    assert error["message"]


def test_a_remembered_token_still_expires_and_keeps_its_kind(
    settings: Settings, issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(settings, cache_size=2)
    token = issuer.access_token(user_id="eve", name="Eve")
    first = verifier.verify(token)
    assert verifier.verify(token) == first
    with pytest.raises(AuthError) as refused:
        verifier.verify(token, typ="refresh")
    assert refused.value.code == "invalid_token"
    # Past its exp the remembered token is refused like any expired one.
    monkeypatch.setattr("contract.auth.time.time", lambda: first.exp + 1.0)
    with pytest.raises(AuthError) as expired:
        verifier.verify(token)
    assert expired.value.code == "token_expired"
    monkeypatch.undo()
    # Bad tokens are never remembered, and the memory stays bounded.
    for bad in bad_tokens(issuer).values():
        with pytest.raises(AuthError):
            verifier.verify(bad)
    assert verifier.verify(token) == first
    others = [issuer.access_token(user_id=f"u{i}", name="U") for i in range(3)]
    assert [verifier.verify(t).sub for t in others] == ["u0", "u1", "u2"]
    assert len(verifier._verified) == 2


async def test_missing_token_and_wrong_scheme_are_refused(ingest: httpx.AsyncClient) -> None:
    r = await ingest.post("/api/v1/scores/update", json=score_body())
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    r = await ingest.post("/api/v1/scores/update", json=score_body(), headers={"authorization": "Basic abc"})
    assert r.status_code == 401


async def test_token_in_query_parameter_and_cookie_are_accepted(
    ingest: httpx.AsyncClient, issuer: TokenIssuer
) -> None:
    await login(ingest, "eve", "Eve")
    token = scorer_token(issuer)
    r = await ingest.post("/api/v1/scores/update", json=score_body(), params={"access_token": token})
    assert r.status_code == 202
    ingest.cookies.set("scorecast_token", token)
    r = await ingest.post("/api/v1/scores/update", json=score_body())
    assert r.status_code == 202


async def test_login_then_refresh_works_once(ingest: httpx.AsyncClient) -> None:
    # The development login grants the roles asked for: a scorer token scores (here: itself).
    body = {"userId": "ada", "name": "Ada", "region": "eu", "roles": ["scorer"]}
    r = await ingest.post("/api/v1/auth/login", json=body)
    assert r.status_code == 200
    pair = r.json()
    assert pair["expiresIn"] > 0
    r = await ingest.post(
        "/api/v1/scores/update", json=score_body("ada"), headers=bearer(pair["accessToken"])
    )
    assert r.status_code == 202
    first = await ingest.post("/api/v1/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert first.status_code == 200
    assert first.json()["accessToken"] != pair["accessToken"]
    again = await ingest.post("/api/v1/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_token"
    # The new refresh token works (once).
    r = await ingest.post("/api/v1/auth/refresh", json={"refreshToken": first.json()["refreshToken"]})
    assert r.status_code == 200


async def test_access_token_cannot_refresh(ingest: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    token = issuer.access_token(user_id="eve", name="Eve")
    r = await ingest.post("/api/v1/auth/refresh", json={"refreshToken": token})
    assert r.status_code == 401


async def test_login_validates_its_body(ingest: httpx.AsyncClient) -> None:
    for body in (
        {"userId": "has space", "name": "X"},
        {"userId": "ok", "name": ""},
        {"userId": "ok", "name": "X", "timeZone": "Mars/Olympus"},
        {"userId": "ok", "name": "X", "isAdmin": True},
    ):
        r = await ingest.post("/api/v1/auth/login", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["code"] in ("invalid_body", "bad_timezone")


async def test_dev_login_is_off_unless_enabled(settings: Settings, redis: Any, mongo: Any) -> None:
    async with asgi_client(create_app(settings.replace(dev_login_enabled=False)), "http://ingest") as client:
        r = await client.post("/api/v1/auth/login", json={"userId": "ada", "name": "Ada"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_rs256_with_a_key_pair(settings: Settings, redis: Any, mongo: Any, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(private)
    (tmp_path / "key.pub").write_bytes(public)
    rs = settings.replace(
        jwt_algorithm="RS256",
        jwt_secret="",
        jwt_private_key_file=str(tmp_path / "key.pem"),
        jwt_public_key_file=str(tmp_path / "key.pub"),
    )
    async with asgi_client(create_app(rs), "http://ingest") as client:
        body = {"userId": "ada", "name": "Ada", "roles": ["scorer"]}
        pair = (await client.post("/api/v1/auth/login", json=body)).json()
        assert jwt.get_unverified_header(pair["accessToken"])["alg"] == "RS256"
        r = await client.post(
            "/api/v1/scores/update", json=score_body("ada"), headers=bearer(pair["accessToken"])
        )
        assert r.status_code == 202
        # Algorithm confusion: an HS256 token keyed with the public key must not pass.
        forged = _hs256_with_raw_key(claims(), public)
        r = await client.post("/api/v1/scores/update", json=score_body(), headers=bearer(forged))
        assert r.status_code == 401


def _hs256_with_raw_key(payload: dict[str, Any], key: bytes) -> str:
    """HS256 signed with arbitrary bytes (PyJWT refuses PEM keys for HMAC, attackers do not)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(payload).encode())
    signature = b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()
