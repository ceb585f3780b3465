"""The audit log on real processes: what the worker records per score change, the admin read
(pagination, filters, validation), rebuilds, and a batch retried after a crash."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from contract import keys
from contract.auth import TokenIssuer
from contract.events import ScoreAction
from contract.settings import Settings
from devstack.processes import Stack
from ingest import store
from ingest.worker import ScoreWorker, boards_of
from store.boards import BoardStore
from tests.eventually import eventually
from tests.helpers import bearer, login, scorer_token


async def post(http: httpx.AsyncClient, scorer: str, user_id: str, increment: int, **headers: str) -> str:
    """A scorer's write for ``user_id``; ``headers`` are the client's (the audit log records them)."""
    action_id = str(uuid.uuid4())
    r = await http.post(
        "/api/v1/scores/update",
        json={"userId": user_id, "scoreIncrement": increment, "actionId": action_id},
        headers={**bearer(scorer), **headers},
    )
    assert r.status_code == 202, r.text
    return action_id


def change(item: dict[str, Any]) -> tuple[str, int, int, int]:
    return item["actionId"], item["oldScore"], item["newScore"], item["increment"]


async def audit_page(http: httpx.AsyncClient, admin: str, **params: Any) -> dict[str, Any]:
    r = await http.get("/api/v1/admin/audit", params=params, headers=bearer(admin))
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def test_every_score_change_is_audited_with_client_and_old_and_new_totals(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada", region="eu")
        headers = {"user-agent": "cheat-o-matic/1.0", "x-forwarded-for": "6.6.6.6"}
        first = await post(http, scorer, "ada", 5, **headers)
        second = await post(http, scorer, "ada", 7)
        page = await eventually(
            lambda: audit_page(http, admin, userId="ada"), until=lambda p: len(p["items"]) == 2
        )
    newest, oldest = page["items"]
    assert page["next"] is None
    assert change(newest) == (second, 5, 12, 7)
    assert change(oldest) == (first, 0, 5, 5)
    assert oldest["type"] == "score" and oldest["userId"] == "ada"
    assert oldest["boards"][0] == "global" and "region:EU" in oldest["boards"]
    # No proxy is trusted by default: the peer's address, not the header's.
    assert oldest["ip"] == "127.0.0.1"
    assert oldest["userAgent"] == "cheat-o-matic/1.0"
    assert newest["userAgent"].startswith("python-httpx/")
    assert newest["ts"] >= oldest["ts"] and newest["ts"].endswith("Z")


async def test_forwarded_for_is_the_client_behind_a_trusted_proxy(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start("ingest.api", trusted_proxies="127.0.0.1")
    stack.start("ingest.worker")
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada")
        await post(http, scorer, "ada", 5, **{"x-forwarded-for": "6.6.6.6, 203.0.113.7"})
        page = await eventually(lambda: audit_page(http, admin), until=lambda p: len(p["items"]) == 1)
    assert page["items"][0]["ip"] == "203.0.113.7"


async def test_audit_pages_newest_first_with_filters_and_validation(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        ada = await login(http, "ada", "Ada")
        await login(http, "bob", "Bob")
        sent = [await post(http, scorer, "ada" if i % 2 else "bob", i + 1) for i in range(7)]
        await eventually(lambda: audit_page(http, admin, limit=100), until=lambda p: len(p["items"]) == 7)
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = await audit_page(http, admin, **params)
            seen += [i["actionId"] for i in page["items"]]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
        assert pages == 3
        assert sorted(seen) == sorted(sent) and len(seen) == 7
        everything = (await audit_page(http, admin, limit=100))["items"]
        assert [i["ts"] for i in everything] == sorted((i["ts"] for i in everything), reverse=True)
        assert {i["userId"] for i in (await audit_page(http, admin, userId="bob"))["items"]} == {"bob"}
        assert len((await audit_page(http, admin, userId="bob"))["items"]) == 4
        assert (await audit_page(http, admin, since="2999-01-01T00:00:00Z"))["items"] == []
        assert len((await audit_page(http, admin, since="0"))["items"]) == 7

        for bad in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"cursor": "nope"},
                    {"since": "yesterday"}, {"userId": "a}b"}):  # fmt: skip
            r = await http.get("/api/v1/admin/audit", params=bad, headers=bearer(admin))
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["code"] in ("bad_query", "bad_cursor")
        assert (await http.get("/api/v1/admin/audit", headers=bearer(ada))).status_code == 403
        assert (await http.get("/api/v1/admin/audit")).status_code == 401


async def test_a_rebuild_that_changes_a_total_is_audited(
    stack: Stack, issuer: TokenIssuer, redis: Any
) -> None:
    stack.start("ingest.api")
    stack.start("ingest.worker")
    scorer = scorer_token(issuer)
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, "ada", "Ada")
        await post(http, scorer, "ada", 5)
        await eventually(lambda: audit_page(http, admin), until=lambda p: len(p["items"]) == 1)
        # Someone edits Redis behind the system's back; a forced rebuild restores MongoDB's truth.
        member = await redis.hget(keys.board_keys("global").members, "ada")
        await redis.zadd(keys.board_keys("global").zset, {member: 500})
        r = await http.post("/api/v1/admin/boards/global/rebuild", headers=bearer(admin))
        assert r.status_code == 202
        page = await eventually(lambda: audit_page(http, admin), until=lambda p: len(p["items"]) == 2)
    rebuilt = page["items"][0]
    assert (rebuilt["type"], rebuilt["boards"], rebuilt["oldScore"], rebuilt["newScore"]) == (
        "rebuild",
        ["global"],
        500,
        5,
    )
    assert rebuilt["increment"] == -495 and rebuilt["actionId"] is None


async def test_a_batch_retried_after_a_crash_is_audited_from_the_board_guards(
    settings: Settings, redis: Any, mongo: Any
) -> None:
    """The worker applied the steps in Redis, then died before MongoDB: the retry's steps answer
    ALREADY_APPLIED, and the audit still records the totals the action reached."""
    await store.ensure_indexes(mongo)
    worker = ScoreWorker(redis=redis, db=mongo, settings=settings)
    earlier = worker_action("ada", 10)
    await worker.apply([earlier])
    crashed = worker_action("ada", 4)
    boards = BoardStore(redis)
    # The lost attempt's steps, under the board guard id the worker uses (the event id).
    event_id = keys.user_action("ada", crashed.action_id)
    await boards.apply_many((b, event_id, "ada", 4) for b in boards_of(crashed))
    await worker.apply([crashed])  # the retry
    doc = await mongo[store.AUDIT].find_one({"_id": f"ada|{crashed.action_id}"})
    assert doc is not None
    assert (doc["oldScore"], doc["newScore"], doc["increment"]) == (10, 14, 4)
    assert doc["boards"] == boards_of(crashed)
    # The first action created the boards (a rebuild counted it): audited as itself too.
    first = await mongo[store.AUDIT].find_one({"_id": f"ada|{earlier.action_id}"})
    assert first is not None and (first["oldScore"], first["newScore"], first["boards"]) == (
        0,
        10,
        boards_of(earlier),
    )
    await worker.apply([crashed])  # a redelivery writes nothing new
    assert await mongo[store.AUDIT].count_documents({}) == 2


def worker_action(user_id: str, increment: int) -> ScoreAction:
    return ScoreAction(
        action_id=str(uuid.uuid4()),
        user_id=user_id,
        name=user_id,
        increment=increment,
        ts_ms=int(time.time() * 1000),
    )
