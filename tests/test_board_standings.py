"""BoardStore.standings on the real Redis-protocol server: several users' places on several boards
in one round trip, with the board store's exists/lost semantics."""

from __future__ import annotations

from typing import Any

from contract import keys
from store.boards import STANDINGS_PER_CALL, BoardStore, Standing
from tests.test_gateway_sse import apply, make_board


async def test_places_of_many_users_on_many_boards(redis: Any) -> None:
    store = await make_board(redis, "global", {"ada": 50, "bo": 30, "cy": 30, "dee": 10})
    await make_board(redis, "region:EU", {"bo": 7})
    before = await redis.info("commandstats")
    found = await store.standings(
        {"global": ["dee", "cy", "ada", "nobody", "bo"], "region:EU": ["bo", "ada"]}
    )
    after = await redis.info("commandstats")
    glob, eu = found
    assert (glob.board, glob.exists, glob.version) == (
        "global",
        True,
        int(await redis.get(keys.board_keys("global").version)),
    )
    assert glob.places == {
        "ada": Standing(rank=1, score=50, above=None),
        "bo": Standing(rank=2, score=30, above=50),  # bo reached 30 before cy: ahead in the tie
        "cy": Standing(rank=3, score=30, above=30),
        "dee": Standing(rank=4, score=10, above=30),
        "nobody": Standing(rank=None, score=None, above=None),
    }
    assert eu.places == {
        "bo": Standing(rank=1, score=7, above=None),
        "ada": Standing(rank=None, score=None, above=None),
    }
    # One script call per board, whatever the number of users.
    calls = after["cmdstat_evalsha"]["calls"] - before.get("cmdstat_evalsha", {"calls": 0})["calls"]
    assert calls in (2, 3)  # 3: a first call answered NOSCRIPT and was loaded (then EVALSHA again)
    await apply(store, "global", {"dee": 100})
    again = (await store.standings({"global": ["dee", "ada"]}))[0]
    assert again.version > glob.version
    assert again.places["dee"] == Standing(rank=1, score=110, above=None)
    assert again.places["ada"] == Standing(rank=2, score=50, above=110)


async def test_many_users_go_in_several_calls_of_one_round_trip(redis: Any) -> None:
    users = {f"u{i:04d}": 2000 - i for i in range(STANDINGS_PER_CALL * 2 + 10)}
    store = await make_board(redis, "global", users)
    found = await store.standings({"global": list(users)})
    assert [len(f.places) for f in found] == [STANDINGS_PER_CALL, STANDINGS_PER_CALL, 10]
    merged = {u: s for f in found for u, s in f.places.items()}
    assert merged["u0000"] == Standing(rank=1, score=2000, above=None)
    assert merged["u1009"] == Standing(rank=1010, score=991, above=992)


async def test_missing_and_lost_boards(redis: Any) -> None:
    store = BoardStore(redis)
    assert await store.standings({}) == []
    assert await store.standings({"global": []}) == []
    [never] = await store.standings({"global": ["ada"]})
    assert (never.exists, never.places) == (False, {})
    await make_board(redis, "global", {"ada": 5})
    await redis.delete(keys.board_keys("global").zset)  # the ranking lost, the version kept
    [lost] = await store.standings({"global": ["ada"]})
    assert (lost.exists, lost.places) == (False, {})
    await make_board(redis, "weekly:2026-W47")  # a board without members exists
    [empty] = await store.standings({"weekly:2026-W47": ["ada"]})
    assert empty.exists and empty.places == {"ada": Standing(rank=None, score=None, above=None)}
