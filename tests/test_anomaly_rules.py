"""The I/O-free parts of anomaly flags and the audit log: rule judgements, client addresses,
audit documents and cursors."""

from __future__ import annotations

import pytest

from contract.errors import BadRequest
from contract.events import ScoreAction
from contract.settings import Settings
from ingest import audit
from ingest.anomaly import BURST, COVERAGE_TOO_FAST, JUMP, QUIZ_TOO_FAST, Rules
from ingest.api.client import client_ip, parse_networks
from store.board_results import ALREADY_APPLIED, APPLIED, ApplyResult

SETTINGS = Settings(
    flag_jump_factor=10.0,
    flag_jump_min_increment=100,
    flag_norm_samples=3,
    flag_board_norm_samples=5,
    flag_burst_actions=3,
    flag_burst_window_s=10.0,
    flag_quiz_min_ms_per_question=1000,
)


def action(user: str, inc: int, ts_ms: int, source: str = "score", **extra: object) -> ScoreAction:
    return ScoreAction(
        action_id=f"{user}-{ts_ms}",
        user_id=user,
        name=user,
        increment=inc,
        ts_ms=ts_ms,
        source=source,
        **extra,
    )


def test_jump_needs_both_the_users_and_the_boards_norm_far_below() -> None:
    rules = Rules(SETTINGS)
    assert rules.jump(500, user_norm=[10, 10], board_norm=[10]) is not None
    assert rules.jump(500, user_norm=[60], board_norm=[10]) is None  # the user usually scores high
    assert rules.jump(500, user_norm=[10], board_norm=[60]) is None  # the board usually scores high
    assert rules.jump(99, user_norm=[1], board_norm=[1]) is None  # below the absolute floor
    assert rules.jump(500, user_norm=[], board_norm=[]) is None  # nothing to compare with
    evidence = rules.jump(500, user_norm=[], board_norm=[20, 30])  # a new user: the board alone
    assert evidence == {"increment": 500, "userMean": None, "boardMean": 25.0, "factor": 10.0}


def test_burst_counts_the_users_actions_inside_the_window() -> None:
    rules = Rules(SETTINGS)
    actions = [action("eve", 5, t) for t in (1_000, 2_000, 3_000, 4_000, 20_000)]
    windows = {"eve": [a.ts_ms for a in actions]}
    hits = rules.evaluate(actions, {}, [], windows)
    assert [(h.rule, h.ts_ms, h.evidence["actions"]) for h in hits] == [(BURST, 4_000, 4)]
    assert hits[0].evidence["actionId"] == "eve-4000"


def test_quiz_too_fast_judges_only_a_timed_quiz() -> None:
    rules = Rules(SETTINGS)
    assert rules.quiz_too_fast(2_999, 3) == {"elapsedMs": 2_999, "questions": 3, "minimumMs": 3_000}
    assert rules.quiz_too_fast(3_000, 3) is None
    assert rules.quiz_too_fast(None, 3) is None
    timed = action("eve", 5, 1, source="quiz", quiz_elapsed_ms=10, quiz_questions=2)
    assert [h.rule for h in rules.evaluate([timed], {}, [], {})] == [QUIZ_TOO_FAST]


def test_coverage_too_fast_judges_a_completion_by_its_covered_seconds() -> None:
    rules = Rules(SETTINGS.replace(flag_coverage_max_rate=2.0, coverage_slack_s=2.0))
    assert rules.coverage_too_fast(95.0, 46_499) == {"coveredS": 95.0, "watchMs": 46_499, "minimumMs": 46_500}
    assert rules.coverage_too_fast(95.0, 46_500) is None
    assert rules.coverage_too_fast(1.5, 0) is None  # within the slack: nothing to judge
    assert rules.coverage_too_fast(None, 1) is None and rules.coverage_too_fast(95.0, None) is None
    done = action("eve", 10, 1, source="completion", covered_s=95.0, watch_ms=1_000)
    assert [h.rule for h in rules.evaluate([done], {}, [], {})] == [COVERAGE_TOO_FAST]
    quiz = action("eve", 10, 1, source="quiz", covered_s=95.0, watch_ms=1_000)  # not a completion
    assert rules.evaluate([quiz], {}, [], {}) == []


def test_norms_grow_with_each_judged_increment_in_order() -> None:
    rules = Rules(SETTINGS)
    user_norms: dict[str, list[int]] = {"ada": [10, 10, 10]}
    board: list[int] = [10]
    hits = rules.evaluate([action("ada", 500, 1), action("ada", 500, 2)], user_norms, board, {})
    # The second 500 is measured against a norm that already holds the first.
    assert [h.rule for h in hits] == [JUMP]
    assert user_norms["ada"] == [500, 500, 10]
    assert board == [500, 500, 10]


def test_forwarded_for_is_honoured_only_from_a_trusted_proxy() -> None:
    proxies = parse_networks("10.0.0.0/8, 192.168.1.1")
    assert client_ip("203.0.113.9", "1.2.3.4", proxies) == "203.0.113.9"  # untrusted peer: its own address
    assert client_ip("10.1.2.3", "1.2.3.4", proxies) == "1.2.3.4"
    # A client-supplied hop before the real one is not believed: the right-most untrusted hop wins.
    assert client_ip("10.1.2.3", "6.6.6.6, 1.2.3.4, 192.168.1.1", proxies) == "1.2.3.4"
    assert client_ip("10.1.2.3", None, proxies) == "10.1.2.3"
    assert client_ip("10.1.2.3", "1.2.3.4", ()) == "10.1.2.3"  # default: no proxy is trusted
    with pytest.raises(ValueError):
        parse_networks("not-an-ip")


def test_action_audit_document_from_applied_and_remembered_steps() -> None:
    a = action("ada", 7, 1_000, ip="1.2.3.4", user_agent="ua")
    doc = audit.action_doc(
        a,
        [
            ("global", ApplyResult("global", APPLIED, total=27, seq=3, reached=27)),
            ("weekly:2026-W48", ApplyResult("weekly:2026-W48", ALREADY_APPLIED, total=40, seq=9, reached=7)),
            ("course:c1", ApplyResult("course:c1", ALREADY_APPLIED, total=7, seq=1, reached=None)),
        ],
    )
    assert doc is not None
    assert (doc["boards"], doc["oldScores"], doc["newScores"]) == (
        ["global", "weekly:2026-W48"],
        [20, 0],
        [27, 7],
    )
    assert (doc["oldScore"], doc["newScore"], doc["type"], doc["ip"], doc["userAgent"]) == (
        20,
        27,
        "score",
        "1.2.3.4",
        "ua",
    )
    only_rebuilt = [("global", ApplyResult("global", ALREADY_APPLIED, total=7, seq=1, reached=None))]
    assert audit.action_doc(a, only_rebuilt) is None


def test_rebuild_audits_only_changed_totals() -> None:
    docs = audit.rebuild_docs(
        "global", 5, before={"ada": 10, "bob": 3, "cy": 4}, after={"ada": 10, "bob": 8, "dan": 2}
    )
    assert [(d["userId"], d["oldScore"], d["newScore"], d["increment"]) for d in docs] == [
        ("bob", 3, 8, 5),
        ("cy", 4, 0, -4),
        ("dan", 0, 2, 2),
    ]


def test_cursor_round_trips_and_rejects_anything_else() -> None:
    assert audit.decode_cursor(audit.encode_cursor(123, "ada|x")) == (123, "ada|x")
    for bad in ("", "%%%", audit.encode_cursor(1, "x")[:-3] + "!!", "WzEsMl0"):  # "[1,2]"
        with pytest.raises(BadRequest):
            audit.decode_cursor(bad)
