"""The GraphQL API (seed 004) on the real Redis-protocol and MongoDB-protocol servers: the same
answers, rules and error codes as REST, one profile batch per request, the document limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import jwt
import pytest

from contract import bodies, keys
from contract.auth import TokenIssuer
from contract.settings import Settings
from devstack.processes import Stack
from devstack.servers import free_port
from ingest.api import leaderboards
from ingest.api.app import create_app
from store import archive
from store.archive import Archived
from store.board_results import Profile
from store.boards import BoardStore
from tests.conftest import TEST_SECRET
from tests.eventually import eventually
from tests.helpers import asgi_client, bearer, login

QUIZ = {
    "title": "Basics",
    "questions": [
        {"questionId": "q1", "correctOption": "b", "points": 3},
        {"questionId": "q2", "correctOption": "a", "points": 2},
    ],
}
COURSE = {
    "title": "Reading",
    "sections": [
        {
            "sectionId": "s1",
            "title": "Start",
            "lectures": [
                {"lectureId": "intro", "title": "Intro", "durationSeconds": 60, "completable": True},
                {"lectureId": "deep", "title": "Deep", "durationSeconds": 600},
            ],
        }
    ],
}
SUBMIT = """mutation($input: QuizActionInput!) {
  submitQuizAction(input: $input) { status scoreDelta actionId attempt attemptsLeft }
}"""


async def gql(
    http: httpx.AsyncClient, query: str, token: str | None = None, **variables: Any
) -> dict[str, Any]:
    """POST /graphql; the answer's JSON (the HTTP status must be 200: errors are in the body)."""
    r = await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=bearer(token) if token else {}
    )
    assert r.status_code == 200, r.text
    assert "Traceback" not in r.text
    answer: dict[str, Any] = r.json()
    return answer


def codes(answer: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in answer.get("errors", [])]


def quiz_input(correct: Sequence[str] = ("q1", "q2"), action_id: str | None = None) -> dict[str, Any]:
    options = {"q1": "b", "q2": "a"}
    return {
        "quizId": "quiz1",
        "actionId": action_id or str(uuid.uuid4()),
        "answers": [
            {"questionId": q, "selectedOption": options[q] if q in correct else "z"} for q in options
        ],
    }


def admin(issuer: TokenIssuer) -> dict[str, str]:
    return bearer(issuer.access_token(user_id="root", name="Root", roles=["admin"]))


async def make_board(redis: Any, board: str, totals: dict[str, int]) -> None:
    store = BoardStore(redis)
    await store.stage_and_commit(board, [], version=1, force=True)
    await store.apply_many((board, str(uuid.uuid4()), user, total) for user, total in totals.items())


@pytest.fixture
async def board(ingest: httpx.AsyncClient, redis: Any) -> dict[str, str]:
    """Three learners on ``global`` (ada 30, bob 20, cy 10), known by their logins."""
    tokens = {
        "ada": await login(ingest, "ada", "Ada Lovelace", region="eu", avatarUrl="https://a/ada.png"),
        "bob": await login(ingest, "bob", "Bob"),
        "cy": await login(ingest, "cy", "Cy"),
    }
    await make_board(redis, "global", {"ada": 30, "bob": 20, "cy": 10})
    return tokens


# ---------------------------------------------------------------- reads
async def test_board_reads_answer_what_rest_answers(ingest: httpx.AsyncClient, board: dict[str, str]) -> None:
    answer = await gql(
        ingest,
        """{ leaderboard(limit: 2) { board version entries { rank userId name avatarUrl score } }
             rank(userId: "bob") { board userId rank score }
             around(userId: "bob", range: 1) { board self { rank userId name score }
                                               above { userId name avatarUrl } below { userId name } } }""",
    )
    assert "errors" not in answer, answer
    data = answer["data"]
    assert data["leaderboard"]["entries"] == [
        {"rank": 1, "userId": "ada", "name": "Ada Lovelace", "avatarUrl": "https://a/ada.png", "score": 30},
        {"rank": 2, "userId": "bob", "name": "Bob", "avatarUrl": None, "score": 20},
    ]
    assert data["rank"] == {"board": "global", "userId": "bob", "rank": 2, "score": 20}
    assert data["around"] == {
        "board": "global",
        "self": {"rank": 2, "userId": "bob", "name": "Bob", "score": 20},
        "above": [{"userId": "ada", "name": "Ada Lovelace", "avatarUrl": "https://a/ada.png"}],
        "below": [{"userId": "cy", "name": "Cy"}],
    }
    rest = (await ingest.get("/api/v1/scores/leaderboard", params={"limit": 2})).json()
    assert {k: v for k, v in rest.items() if k != "updatedAt"} == {
        "board": "global",
        "version": data["leaderboard"]["version"],
        "entries": data["leaderboard"]["entries"],
    }
    assert (await ingest.get("/api/v1/scores/rank/bob")).json() == data["rank"]


BAD_READS = [
    ("{ leaderboard(limit: 0) { board } }", "bad_query"),
    ("{ leaderboard(limit: 101) { board } }", "bad_query"),
    ("{ leaderboard(limit: 100000) { board } }", "bad_query"),
    ('{ leaderboard(board: "galaxy") { board } }', "invalid_board"),
    ('{ leaderboard(board: "weekly:2026-47") { board } }', "invalid_board"),
    ('{ rank(userId: "nobody") { rank } }', "not_ranked"),
    ('{ around(userId: "bob", range: 51) { board } }', "bad_query"),
    ('{ around(userId: "bob", board: "region:") { board } }', "invalid_board"),
    ('{ leaderboard(limit: "ten") { board } }', "bad_request"),
    ("{ leaderboard { nope } }", "bad_request"),
    ("{ leaderboard { board }", "bad_request"),
]


@pytest.mark.parametrize(("query", "code"), BAD_READS, ids=[c + ":" + q[:30] for q, c in BAD_READS])
async def test_bad_reads_get_the_rest_codes(
    ingest: httpx.AsyncClient, board: dict[str, str], query: str, code: str
) -> None:
    answer = await gql(ingest, query)
    assert codes(answer) == [code], answer
    assert answer["errors"][0]["message"]


async def test_a_board_only_mongodb_has_is_rebuilt_and_an_empty_one_reads_empty(
    ingest: httpx.AsyncClient,
) -> None:
    answer = await gql(ingest, '{ leaderboard(board: "weekly") { board version entries { userId } } }')
    assert answer["data"]["leaderboard"]["entries"] == []
    assert answer["data"]["leaderboard"]["board"].startswith("weekly:")


async def test_a_100_entry_leaderboard_hydrates_in_one_batch(
    ingest: httpx.AsyncClient, redis: Any, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [f"u{i:03d}" for i in range(100)]
    await make_board(redis, "global", {u: 1000 - i for i, u in enumerate(users)})
    # Half the profiles in the Redis cache, half only in MongoDB (the batch reads those in one find).
    await BoardStore(redis).cache_profiles(
        {u: Profile(name=f"N{u}", avatar_url=f"https://a/{u}") for u in users[:50]}, ttl_s=600
    )
    await mongo["users"].insert_many([{"_id": u, "name": f"N{u}", "avatarUrl": None} for u in users[50:]])
    calls: list[list[str]] = []
    real = leaderboards.load_profiles

    async def counted(st: Any, user_ids: Sequence[str]) -> dict[str, Profile]:
        calls.append(list(user_ids))
        return await real(st, user_ids)

    monkeypatch.setattr(leaderboards, "load_profiles", counted)
    await redis.config_resetstat()
    answer = await gql(
        ingest,
        """{ leaderboard(limit: 100) { entries { rank userId name avatarUrl score } }
             around(userId: "u050", range: 2) { self { name } above { name } below { name } } }""",
    )
    assert "errors" not in answer, answer
    entries = answer["data"]["leaderboard"]["entries"]
    assert [e["userId"] for e in entries] == users
    assert [e["name"] for e in entries] == [f"N{u}" for u in users]
    assert entries[0]["avatarUrl"] == "https://a/u000" and entries[99]["avatarUrl"] is None
    assert answer["data"]["around"]["self"] == {"name": "Nu050"}
    # One batch for every name and avatar of the request, each member once, whichever field or
    # root field asked for it (DataLoader's cache), and the same for REST with the same function.
    assert len(calls) == 1, [len(c) for c in calls]
    assert sorted(calls[0]) == users
    stats = await redis.info("commandstats")
    assert stats["cmdstat_hmget"]["calls"] == 100  # one HMGET per member, in one pipeline
    calls.clear()
    assert (
        len((await ingest.get("/api/v1/scores/leaderboard", params={"limit": 100})).json()["entries"]) == 100
    )
    assert len(calls) == 1


async def test_fields_without_names_read_no_profiles(
    ingest: httpx.AsyncClient, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_board(redis, "global", {"ada": 3, "bob": 2})
    calls: list[Sequence[str]] = []

    async def counted(st: Any, user_ids: Sequence[str]) -> dict[str, Profile]:
        calls.append(user_ids)
        return {}

    monkeypatch.setattr(leaderboards, "load_profiles", counted)
    answer = await gql(ingest, "{ leaderboard { entries { userId score } } }")
    assert answer["data"]["leaderboard"]["entries"] == [
        {"userId": "ada", "score": 3},
        {"userId": "bob", "score": 2},
    ]
    assert calls == []


# ---------------------------------------------------------------- tokens
def expired_token() -> str:
    now = int(time.time())
    claims = {
        "sub": "ada", "name": "Ada", "iat": now - 100, "exp": now - 10, "jti": "j1",
        "aud": "scorecast", "iss": "scorecast-dev", "typ": "access",
    }  # fmt: skip
    return jwt.encode(claims, TEST_SECRET, algorithm="HS256")


def forged_token(issuer: TokenIssuer) -> str:
    header, payload, _ = issuer.access_token(user_id="ada", name="Ada").split(".")
    return f"{header}.{payload}.{'A' * 43}"


@pytest.mark.parametrize(
    ("which", "code"),
    [
        ("none", "unauthorized"),
        ("garbage", "invalid_token"),
        ("forged", "invalid_token"),
        ("expired", "token_expired"),
    ],
)
async def test_caller_fields_need_a_valid_token(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, board: dict[str, str], which: str, code: str
) -> None:
    token = {
        "none": None,
        "garbage": "not-a-jwt",
        "forged": forged_token(issuer),
        "expired": expired_token(),
    }[which]
    for query in (
        '{ progress(courseId: "c1") { courseId } }',
        "{ studentStats { currentStreak } }",
        "{ courseProgress { courseId } }",
        'mutation { completeLecture(courseId: "c1", lectureId: "intro") { message } }',
    ):
        answer = await gql(ingest, query, token)
        assert codes(answer) == [code], (query, answer)
        assert answer["data"] is None
    answer = await gql(ingest, SUBMIT, token, input=quiz_input())
    assert codes(answer) == [code]
    # The board reads stay public, as on REST, whatever token comes along.
    answer = await gql(ingest, "{ leaderboard { entries { userId } } }", token)
    assert "errors" not in answer and len(answer["data"]["leaderboard"]["entries"]) == 3
    metrics = (await ingest.get("/metrics")).text
    assert f'scorecast_auth_failures_total{{code="{code}"}} 5.0' in metrics


async def test_the_token_is_taken_from_the_cookie_as_on_rest(
    ingest: httpx.AsyncClient, board: dict[str, str]
) -> None:
    ingest.cookies.set("scorecast_token", board["ada"])
    answer = await gql(ingest, "{ studentStats { totalCompleted } }")
    assert answer == {"data": {"studentStats": {"totalCompleted": 0}}}


# ---------------------------------------------------------------- actions
@pytest.fixture
async def quiz(ingest: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    r = await ingest.put("/api/v1/quizzes/quiz1", json=QUIZ, headers=admin(issuer))
    assert r.status_code == 200, r.text


async def test_submit_quiz_action_grades_counts_once_and_queues_the_improvement(
    ingest: httpx.AsyncClient, redis: Any, board: dict[str, str], quiz: None
) -> None:
    ada = board["ada"]
    first = quiz_input(correct=["q1"])
    answer = await gql(ingest, SUBMIT, ada, input=first)
    expected = {"status": "queued", "scoreDelta": 3, "actionId": first["actionId"], "attempt": 1}
    assert answer == {"data": {"submitQuizAction": {**expected, "attemptsLeft": None}}}
    again = await gql(ingest, SUBMIT, ada, input=first)
    assert again["data"]["submitQuizAction"]["status"] == "duplicate"
    better = await gql(ingest, SUBMIT, ada, input=quiz_input())
    assert (
        better["data"]["submitQuizAction"]["scoreDelta"],
        better["data"]["submitQuizAction"]["attempt"],
    ) == (2, 2)
    # The same path as REST: a REST submission continues the same tally.
    r = await ingest.post("/api/v1/quiz/submit", json=quiz_input(), headers=bearer(ada))
    assert (r.status_code, r.json()["status"], r.json()["attempt"]) == (200, "graded", 3)
    queued = [e for _, e in await redis.xrange(keys.SCORE_STREAM)]
    assert len(queued) == 2
    metrics = (await ingest.get("/metrics")).text
    for outcome, n in (("accepted", 2), ("duplicate", 1), ("graded", 1)):
        assert f'scorecast_score_writes_total{{endpoint="quiz",outcome="{outcome}"}} {n}.0' in metrics


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("actionId not a UUID", {**quiz_input(), "actionId": "abc"}, "invalid_body"),
    ("no answers", {**quiz_input(), "answers": []}, "invalid_body"),
    ("bad quizId", {**quiz_input(), "quizId": "a b"}, "invalid_body"),
    ("timestamp without offset", {**quiz_input(), "timestamp": "2026-11-24T05:00:00"}, "invalid_body"),
    ("unknown quiz", {**quiz_input(), "quizId": "quiz9"}, "unknown_quiz"),
    ("missing field", {"quizId": "quiz1", "answers": []}, "bad_request"),
    ("unknown field", {**quiz_input(), "score": 100}, "bad_request"),
]


@pytest.mark.parametrize(("why", "value", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_quiz_input_is_refused_and_nothing_is_queued(
    ingest: httpx.AsyncClient, redis: Any, board: dict[str, str], quiz: None, why: str, value: Any, code: str
) -> None:
    answer = await gql(ingest, SUBMIT, board["ada"], input=value)
    assert codes(answer) == [code], answer
    assert await redis.xlen(keys.SCORE_STREAM) == 0


async def test_a_client_timestamp_with_an_offset_is_accepted(
    ingest: httpx.AsyncClient, board: dict[str, str], quiz: None
) -> None:
    answer = await gql(
        ingest, SUBMIT, board["ada"], input={**quiz_input(), "timestamp": "2026-11-24T05:00:00Z"}
    )
    assert answer["data"]["submitQuizAction"]["status"] == "queued", answer


async def test_rate_limit_and_block_answer_their_codes(
    settings: Settings, redis: Any, mongo: Any, issuer: TokenIssuer
) -> None:
    limited = settings.replace(rate_limit_burst=1, rate_limit_per_s=0.1)
    async with asgi_client(create_app(limited), "http://ingest") as http:
        r = await http.put("/api/v1/quizzes/quiz1", json=QUIZ, headers=admin(issuer))
        assert r.status_code == 200
        ada = await login(http, "ada", "Ada")
        assert codes(await gql(http, SUBMIT, ada, input=quiz_input())) == []
        r = await http.post(
            "/graphql", json={"query": SUBMIT, "variables": {"input": quiz_input()}}, headers=bearer(ada)
        )
        assert r.status_code == 200
        [error] = r.json()["errors"]
        assert error["extensions"]["code"] == "rate_limited"
        assert 1 <= error["extensions"]["retryAfterS"] <= 10
        assert r.headers["retry-after"] == str(error["extensions"]["retryAfterS"])
        assert (
            'scorecast_rate_limit_violations_total{code="rate_limited"} 1.0'
            in (await http.get("/metrics")).text
        )

        until_ms = int(time.time() * 1000) + 60_000
        await redis.set(keys.score_block("ada"), until_ms, px=60_000)
        answer = await gql(http, SUBMIT, ada, input=quiz_input())
        assert codes(answer) == ["temporarily_blocked"]
        assert answer["errors"][0]["extensions"]["until"].startswith(time.strftime("%Y-", time.gmtime()))


async def test_complete_lecture_progress_and_stats(
    ingest: httpx.AsyncClient, issuer: TokenIssuer, board: dict[str, str]
) -> None:
    r = await ingest.put("/api/v1/courses/c1", json=COURSE, headers=admin(issuer))
    assert r.status_code == 200, r.text
    ada = board["ada"]
    locked = await gql(
        ingest, 'mutation { completeLecture(courseId: "c1", lectureId: "deep") { message } }', ada
    )
    assert codes(locked) == ["lecture_locked"]
    done = await gql(
        ingest,
        'mutation { completeLecture(courseId: "c1", lectureId: "intro") { message completionPercentage } }',
        ada,
    )
    assert done == {"data": {"completeLecture": {"message": "completed", "completionPercentage": 50.0}}}
    not_watched = await gql(
        ingest, 'mutation { completeLecture(courseId: "c1", lectureId: "deep") { message } }', ada
    )
    assert codes(not_watched) == ["not_watched"]
    answer = await gql(
        ingest,
        """{ progress(courseId: "c1") { courseId lastWatchedLecture completedLectures completionPercentage
                                          unlockedLectures watchTimes { lectureId seconds } totalMarks } }""",
        ada,
    )
    view = answer["data"]["progress"]
    assert view["completedLectures"] == ["intro"] and view["completionPercentage"] == 50.0
    assert view["unlockedLectures"] == ["intro", "deep"]
    rest = (await ingest.get("/api/v1/progress/c1", headers=bearer(ada))).json()
    assert view["watchTimes"] == [{"lectureId": k, "seconds": v} for k, v in rest["watchTimes"].items()]
    assert {k: v for k, v in view.items() if k != "watchTimes"} == {
        k: rest[k] for k in view if k != "watchTimes"
    }
    # Bob's view of the same course is his own.
    bobs = await gql(ingest, '{ progress(courseId: "c1") { completedLectures } }', board["bob"])
    assert bobs["data"]["progress"]["completedLectures"] == []
    for query, code in (
        ('{ progress(courseId: "nope") { courseId } }', "unknown_course"),
        ('{ progress(courseId: "a b") { courseId } }', "bad_id"),
        ('mutation { completeLecture(courseId: "c1", lectureId: "x y") { message } }', "invalid_body"),
        ('mutation { completeLecture(courseId: "c1", lectureId: "zzz") { message } }', "unknown_lecture"),
    ):
        assert codes(await gql(ingest, query, ada)) == [code], query
    stats = await gql(
        ingest, "{ studentStats { currentStreak longestStreak lastActiveDate totalCompleted } }", ada
    )
    rest_stats = (await ingest.get("/api/v1/stats/student", headers=bearer(ada))).json()
    assert stats["data"]["studentStats"] == rest_stats
    courses = await gql(ingest, "{ courseProgress { courseId progress } }", ada)
    assert (
        courses["data"]["courseProgress"]
        == (await ingest.get("/api/v1/stats/course-progress", headers=bearer(ada))).json()
    )


# ---------------------------------------------------------------- limits and the endpoint itself
async def test_depth_cost_and_alias_limits(settings: Settings, redis: Any, mongo: Any) -> None:
    shallow = settings.replace(graphql_max_depth=1, graphql_max_aliases=3, graphql_max_tokens=400)
    async with asgi_client(create_app(shallow), "http://ingest") as http:
        assert codes(await gql(http, "{ leaderboard { board } }")) == []
        assert codes(await gql(http, '{ around(userId: "a") { self { name } } }')) == ["query_too_deep"]
        costly = (
            "{ a: leaderboard(limit: 100) { board } b: leaderboard(limit: 100) { board } "
            'c: leaderboard(limit: 100) { board } d: rank(userId: "x") { rank } }'
        )
        assert codes(await gql(http, costly)) == ["query_too_costly", "query_too_costly"]  # cost and aliases
        # A variable counts as the largest value it may take; a fragment counts where spread.
        by_variable = (
            'query($n: Int!) { a: leaderboard(limit: $n) { board } ...F b: around(userId: "x", range: $n) '
            "{ board } } fragment F on Query { c: leaderboard(limit: 100) { board } }"
        )
        assert codes(await gql(http, by_variable, n=1)) == ["query_too_costly"]
        two = "{ a: leaderboard(limit: 100) { board } b: leaderboard(limit: 100) { board } }"
        assert codes(await gql(http, two)) == []
        many_tokens = "{ " + " ".join(["__typename"] * 400) + " }"
        assert codes(await gql(http, many_tokens)) == ["query_too_costly"]


@pytest.mark.parametrize("dev_login", [True, False])
async def test_graphiql_only_with_the_development_login(
    settings: Settings, redis: Any, mongo: Any, dev_login: bool
) -> None:
    async with asgi_client(
        create_app(settings.replace(dev_login_enabled=dev_login)), "http://ingest"
    ) as http:
        r = await http.get("/graphql", headers={"accept": "text/html"})
        if dev_login:
            assert r.status_code == 200 and "graphiql" in r.text.lower()
        else:
            assert r.status_code == 404
            assert r.json()["errors"][0]["extensions"]["code"] == "not_found"
            assert "graphiql" not in r.text.lower()
        # Queries are POSTed, never run from a GET (a link cannot run one on a learner's cookie).
        r = await http.get("/graphql", params={"query": "{ studentStats { totalCompleted } }"})
        assert r.status_code in (400, 405) and "data" not in r.json()


async def test_requests_that_are_not_graphql_get_the_error_shape(ingest: httpx.AsyncClient) -> None:
    json_type = {"content-type": "application/json"}
    for body, headers, status, code in (
        (b'{"query": "{ leaderboard { board } }"', json_type, 400, "bad_request"),
        (b'"just a string"', json_type, 400, "bad_request"),
        (b'\xff\xfe{"query": 1}', json_type, 400, "bad_request"),
        (b"{}", json_type, 400, "bad_request"),
        (b'{"query": 7}', json_type, 400, "bad_request"),
        (b"query=x", {"content-type": "text/plain"}, 400, "bad_request"),
        (
            b'{"query": "' + b" " * 20_000 + b'{ leaderboard { board } }"}',
            json_type,
            413,
            "payload_too_large",
        ),
        (b'[{"query": "{ leaderboard { board } }"}]', json_type, 400, "bad_request"),
    ):
        r = await ingest.post("/graphql", content=body, headers=headers)
        assert (r.status_code, r.json()["errors"][0]["extensions"]["code"]) == (status, code), body[:40]
    r = await ingest.put("/graphql", json={"query": "{ leaderboard { board } }"})
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_redis_down_is_unavailable_and_a_bug_is_an_internal_error_without_traceback(
    settings: Settings, ingest: httpx.AsyncClient, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with asgi_client(create_app(down), "http://ingest") as http:
        answer = await gql(http, "{ leaderboard { board } }")
        assert codes(answer) == ["unavailable"]

    async def broken(*args: Any) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(leaderboards, "top_of", broken)
    r = await ingest.post("/graphql", json={"query": "{ leaderboard { board } }"})
    assert r.status_code == 200
    assert r.json()["errors"][0]["extensions"] == {"code": "internal_error"}
    assert "secret detail" not in r.text and "Traceback" not in r.text


# ---------------------------------------------------------------- real processes
async def test_two_learners_through_graphql_on_the_real_stack(stack: Stack, issuer: TokenIssuer) -> None:
    """The ingest API, the worker and the flusher as processes: quiz points reach the boards, a
    completion reaches the stats, and each learner sees only their own."""
    for module in ("ingest.api", "ingest.worker", "ingest.flusher"):
        stack.start(module)
    async with httpx.AsyncClient(base_url=stack.ingest_url, timeout=30) as http:
        ada = await login(http, "ada", "Ada Lovelace", region="eu")
        bob = await login(http, "bob", "Bob", region="na")
        for path, body in (("/api/v1/quizzes/quiz1", QUIZ), ("/api/v1/courses/c1", COURSE)):
            r = await http.put(path, json=body, headers=admin(issuer))
            assert r.status_code == 200, r.text
        for token, correct in ((ada, ["q1", "q2"]), (bob, ["q1"])):
            answer = await gql(http, SUBMIT, token, input=quiz_input(correct=correct))
            assert answer["data"]["submitQuizAction"]["status"] == "queued", answer

        async def board() -> list[tuple[str, str, int]]:
            answer = await gql(http, "{ leaderboard { entries { userId name score } } }")
            return [(e["userId"], e["name"], e["score"]) for e in answer["data"]["leaderboard"]["entries"]]

        assert await eventually(board, until=lambda rows: len(rows) == 2, timeout_s=60) == [
            ("ada", "Ada Lovelace", 5),
            ("bob", "Bob", 3),
        ]
        mine = await gql(http, '{ rank(userId: "bob", board: "region:NA") { rank score } }')
        assert mine["data"]["rank"] == {"rank": 1, "score": 3}

        done = await gql(
            http,
            'mutation { completeLecture(courseId: "c1", lectureId: "intro") { completionPercentage } }',
            ada,
        )
        assert done["data"]["completeLecture"]["completionPercentage"] == 50.0

        async def stats(token: str) -> dict[str, Any]:
            answer = await gql(
                http, "{ studentStats { totalCompleted } courseProgress { courseId progress } }", token
            )
            found: dict[str, Any] = answer["data"]
            return found

        assert await eventually(
            lambda: stats(ada),
            until=lambda s: s["studentStats"]["totalCompleted"] == 1 and s["courseProgress"] != [],
            timeout_s=60,
        ) == {"studentStats": {"totalCompleted": 1}, "courseProgress": [{"courseId": "c1", "progress": 50.0}]}
        assert await stats(bob) == {"studentStats": {"totalCompleted": 0}, "courseProgress": []}


async def test_a_closed_period_answers_from_its_archive_with_the_names_at_the_close(
    ingest: httpx.AsyncClient, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = "weekly:2026-W40"
    final = Archived(
        board=board,
        version=7,
        ranked_users=3,
        closed_at_ms=1_790_000_000_000,
        entries=[
            bodies.LeaderboardEntry(
                rank=1, user_id="ada", name="Ada then", score=9, avatar_url="https://a/1"
            ),
            bodies.LeaderboardEntry(rank=2, user_id="bob", name="Bob then", score=4, avatar_url=None),
        ],
    )
    assert await archive.insert(mongo, final)
    calls: list[Sequence[str]] = []

    async def counted(st: Any, user_ids: Sequence[str]) -> dict[str, Profile]:
        calls.append(user_ids)
        return {}

    monkeypatch.setattr(leaderboards, "load_profiles", counted)
    answer = await gql(
        ingest,
        f"""{{ leaderboard(board: "{board}") {{ version closedAt rankedUsers
                                               entries {{ rank name avatarUrl score }} }}
              rank(board: "{board}", userId: "bob") {{ rank score }}
              around(board: "{board}", userId: "ada", range: 1) {{ self {{ name }} below {{ name }} }} }}""",
    )
    assert "errors" not in answer, answer
    page = answer["data"]["leaderboard"]
    assert (page["version"], page["rankedUsers"], page["closedAt"]) == (7, 3, "2026-09-21T14:13:20.000Z")
    assert page["entries"] == [
        {"rank": 1, "name": "Ada then", "avatarUrl": "https://a/1", "score": 9},
        {"rank": 2, "name": "Bob then", "avatarUrl": None, "score": 4},
    ]
    assert answer["data"]["rank"] == {"rank": 2, "score": 4}
    assert answer["data"]["around"] == {"self": {"name": "Ada then"}, "below": [{"name": "Bob then"}]}
    assert calls == []  # the archive's names, not today's profiles
    rest = (await ingest.get("/api/v1/scores/leaderboard", params={"board": board})).json()
    assert (rest["closedAt"], rest["rankedUsers"]) == (page["closedAt"], page["rankedUsers"])
    missing = await gql(ingest, f'{{ rank(board: "{board}", userId: "cy") {{ rank }} }}')
    assert codes(missing) == ["not_ranked"]
