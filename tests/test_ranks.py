"""The rank planner and rank frames (gateway/ranks.py): I/O-free, without an event loop."""

from __future__ import annotations

import json

from contract.push import RankMessage, server_message_decoder
from gateway.ranks import UNRANKED, Place, RankPlanner, rank_frames


def planner(lookups_per_s: float = 1000.0, refresh_s: float = 5.0, burst_s: float = 1.0) -> RankPlanner[str]:
    return RankPlanner(lookups_per_s=lookups_per_s, refresh_s=refresh_s, burst_s=burst_s, now=0.0)


def test_place_gap_to_next_rank() -> None:
    assert Place.of(1234, 100, 156) == Place(rank=1234, score=100, gap_to_next=56)
    assert Place.of(1, 500, None) == Place(rank=1, score=500, gap_to_next=None)
    assert Place.of(2, 40, 40) == Place(rank=2, score=40, gap_to_next=0)  # a tie, reached later
    assert Place.of(None, None, None) is UNRANKED


def test_rank_frames_for_both_transports() -> None:
    frames = rank_frames("region:EU", 9, Place(rank=3, score=70, gap_to_next=5))
    head, data = frames.sse.decode().rstrip("\n").split("\n")
    assert head == "event: rank"  # and no id: line (the id is the shared frame's version)
    assert frames.sse.endswith(b"\n\n")
    want = {"board": "region:EU", "version": 9, "rank": 3, "score": 70, "gapToNext": 5}
    assert json.loads(data.removeprefix("data: ")) == want
    assert json.loads(frames.ws_text) == {"type": "rank", **want}
    # The documented Struct of the server messages decodes it.
    assert server_message_decoder.decode(frames.ws_text) == RankMessage(
        board="region:EU", version=9, rank=3, score=70, gap_to_next=5
    )
    unranked = json.loads(rank_frames("global", 1, UNRANKED).ws_text)
    assert unranked == {
        "type": "rank",
        "board": "global",
        "version": 1,
        "rank": None,
        "score": None,
        "gapToNext": None,
    }


def test_a_new_viewer_is_looked_up_at_once_and_sent_its_place() -> None:
    p = planner()
    p.follow("c1", "global", "ada")
    assert p.plan(0.25) == {"global": ["ada"]}
    out = p.looked_up("global", 7, {"ada": Place(rank=2, score=10, gap_to_next=3)})
    assert [(f.place.rank, f.version, conns) for f, conns in out] == [(2, 7, ["c1"])]


def test_not_sent_again_when_unchanged_but_sent_when_it_moved() -> None:
    p = planner()
    p.follow("c1", "global", "ada")
    p.plan(0.25)
    p.looked_up("global", 7, {"ada": Place(rank=2, score=10, gap_to_next=3)})
    # A newer board version, the same place: nothing to send.
    assert p.looked_up("global", 8, {"ada": Place(rank=2, score=10, gap_to_next=3)}) == []
    # Someone above moved: the gap changed.
    out = p.looked_up("global", 9, {"ada": Place(rank=2, score=10, gap_to_next=8)})
    assert [(f.place.gap_to_next, conns) for f, conns in out] == [(8, ["c1"])]
    # An older read arriving late is ignored.
    assert p.looked_up("global", 8, {"ada": Place(rank=5, score=1, gap_to_next=1)}) == []


def test_many_devices_of_one_user_share_one_lookup() -> None:
    p = planner()
    for conn in ("phone", "laptop", "tablet"):
        p.follow(conn, "global", "ada")
    assert p.plan(0.25) == {"global": ["ada"]}
    [(frames, conns)] = p.looked_up("global", 3, {"ada": Place(rank=1, score=9, gap_to_next=None)})
    assert sorted(conns) == ["laptop", "phone", "tablet"]
    # A fourth device gets the known place without a lookup, the others nothing again.
    p.follow("watch", "global", "ada")
    assert p.plan(0.5) == {}
    [(again, conns)] = p.replays()
    assert conns == ["watch"] and again.place == frames.place and again.version == 3
    assert p.replays() == []


def test_anonymous_and_disabled_never_ranked() -> None:
    p = planner()
    p.follow("anon", "global", "")
    assert p.plan(1.0) == {} and p.viewers == {}
    off = planner(lookups_per_s=0)
    off.follow("c1", "global", "ada")
    assert off.plan(1.0) == {} and not off.enabled


def test_own_changes_go_first_and_budget_is_respected() -> None:
    # 300 viewers to refresh every second need 300 lookups/s: more than the budget of 100/s
    # (a burst of at most 100).
    p = planner(lookups_per_s=100.0, refresh_s=1.0)
    for i in range(300):
        p.follow(f"c{i}", "global", f"u{i:03d}")
    first = p.plan(0.0)  # the new viewers: 100 of them now (the budget), in follow order
    assert first == {"global": [f"u{i:03d}" for i in range(100)]}
    p.changed("global", ["u299", "u250", "not-here"])
    # 0.1 s later: 10 lookups' worth of budget; the two own changes jump the queue.
    second = p.plan(0.1)["global"]
    assert second[:2] == ["u299", "u250"]
    assert len(second) == 10
    # Over a long run, never more lookups than the budget allows.
    total = len(first["global"]) + len(second)
    now = 0.1
    for _ in range(200):
        now += 0.25
        total += sum(len(users) for users in p.plan(now).values())
    assert total <= 100 + now * 100
    assert total >= now * 100 - 100  # and all of it is used while work waits


def test_a_late_tick_takes_no_more_than_the_burst() -> None:
    p = planner(lookups_per_s=100.0, refresh_s=1.0, burst_s=0.5)
    for i in range(500):
        p.follow(f"c{i}", "global", f"u{i:03d}")
    assert len(p.plan(0.0)["global"]) == 50  # half a second of budget
    assert len(p.plan(0.1)["global"]) == 10
    assert len(p.plan(30.0)["global"]) == 50  # 30 s late: still half a second's worth


def test_round_robin_refreshes_every_viewer_within_refresh_s() -> None:
    # Planned every tick_s: a turn comes due two ticks early (one to be planned, one for the
    # tick's read and hand-over), so no gap exceeds refresh_s less one tick.
    p = RankPlanner(lookups_per_s=1000.0, refresh_s=5.0, tick_s=0.25, now=0.0)
    users = [f"u{i}" for i in range(40)]
    for user in users:
        p.follow(user, "global", user)
    p.plan(0.0)  # the first lookups of all 40
    seen: dict[str, list[float]] = {u: [] for u in users}
    now = 0.2 - 0.25  # ticks at 0.2, 0.45, ...: between the due times (0.0 + n * 0.25)
    per_tick = []
    while now < 20.0 - 0.25:
        now += 0.25
        planned = p.plan(now).get("global", [])
        per_tick.append(len(planned))
        for user in planned:
            seen[user].append(now)
    for user, times in seen.items():
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)] + [now - times[-1]]
        assert max(gaps) <= 5.0 - 0.25, (user, times)
    # Spread evenly (40 viewers / 4.5 s: about 2 per 0.25 s tick), not all at once.
    assert max(per_tick) <= 3


def test_an_own_lookup_postpones_its_round_robin_turn() -> None:
    p = planner(lookups_per_s=1000.0, refresh_s=1.0)
    p.follow("a", "global", "a")
    p.follow("b", "global", "b")
    p.plan(0.0)
    p.changed("global", ["a"])
    looked = [u for t in (0.1, 0.2, 0.3, 0.4, 0.5) for u in p.plan(t).get("global", [])]
    assert looked.count("a") == 1  # its own change; its turn is due a refresh after that
    assert "b" in looked


def test_unfollow_forgets_and_failed_lookups_are_retried() -> None:
    p = planner()
    p.follow("c1", "global", "ada")
    p.follow("c2", "global", "ada")
    p.unfollow("c1", "global", "ada")
    planned = p.plan(0.25)
    assert planned == {"global": ["ada"]}
    p.retry(planned)  # Redis failed
    assert p.plan(0.5) == {"global": ["ada"]}
    [(_, conns)] = p.looked_up("global", 1, {"ada": UNRANKED})
    assert conns == ["c2"]
    p.unfollow("c2", "global", "ada")
    p.unfollow("c2", "global", "ada")  # twice: harmless
    assert p.viewers == {}
    assert p.looked_up("global", 2, {"ada": Place(rank=1, score=1, gap_to_next=None)}) == []
    assert p.plan(10.0) == {}


def test_per_board_pairs() -> None:
    p = planner()
    p.follow("c1", "global", "ada")
    p.follow("c1", "region:EU", "ada")
    assert p.plan(0.25) == {"global": ["ada"], "region:EU": ["ada"]}
    p.changed("region:EU", ["ada"])
    assert p.plan(0.5) == {"region:EU": ["ada"]}


def test_the_own_lane_takes_own_changes_alone_within_the_shared_budget() -> None:
    p = planner(lookups_per_s=100.0, refresh_s=1.0, burst_s=0.5)
    for i in range(300):
        p.follow(f"c{i}", "global", f"u{i:03d}")
    assert len(p.plan(0.0)["global"]) == 50  # half a second of budget: the bucket is empty now
    assert p.changed("global", ["nobody"]) is False  # no viewer here: nothing for the own lane
    assert p.changed("global", ["u299", "nobody", "u250"]) is True
    # 50 ms on: 5 lookups' worth. The own lane reads the two own changes, nothing else (not the
    # 250 new viewers waiting, not a round-robin turn).
    assert p.plan_own(0.05) == {"global": ["u299", "u250"]}
    assert p.plan_own(0.06) == {}  # nothing left of its own
    # The tick gets what the lane left of the budget (3, and 5 more since): the new viewers, and
    # neither of the two.
    tick = p.plan(0.1)["global"]
    assert tick == [f"u{i:03d}" for i in range(50, 58)]


def test_own_changes_the_own_lane_had_no_budget_for_go_first_at_the_next_tick() -> None:
    p = planner(lookups_per_s=100.0, refresh_s=1.0, burst_s=0.5)
    for i in range(300):
        p.follow(f"c{i}", "global", f"u{i:03d}")
    p.plan(0.0)  # the bucket is empty
    own = [f"u{i:03d}" for i in range(10)]  # looked up already (not new)
    p.changed("global", own)
    assert p.plan_own(0.03) == {"global": own[:3]}  # 3 lookups' worth
    assert p.backlog == 250 + 7  # new viewers and the own changes left
    assert p.plan(0.1)["global"] == own[3:]  # 7 lookups' worth: the rest of the own changes first


def test_the_own_lane_leaves_the_round_robin_pace_alone() -> None:
    # Own lookups in between (each also postpones that viewer's turn): every viewer is still
    # looked up within refresh_s, and the budget holds over both lanes.
    p = planner(lookups_per_s=1000.0, refresh_s=5.0)
    users = [f"u{i}" for i in range(40)]
    for user in users:
        p.follow(user, "global", user)
    p.plan(0.0)
    seen: dict[str, list[float]] = {u: [] for u in users}
    now, total = 0.0, 40
    while now < 20.0:
        now += 0.125
        p.changed("global", [users[int(now * 8) % 40]])
        for user in p.plan_own(now).get("global", []):
            seen[user].append(now)
            total += 1
        now += 0.125
        for user in p.plan(now).get("global", []):
            seen[user].append(now)
            total += 1
    for user, times in seen.items():
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)] + [now - times[-1]]
        assert max(gaps) <= 5.0 + 0.25, (user, times)
    assert total <= 1000 * 0.5 + 1000 * now
