"""The gateway's I/O-free core, without an event loop."""

from __future__ import annotations

import json

import pytest

from contract.push import Ack, FrameEntry
from gateway.protocol import (
    BoardFrames,
    IllegalTransition,
    Lifecycle,
    Outbox,
    State,
    Throttle,
    TokenBucket,
    ws_text_frame,
)
from gateway.ws import ack_text, encode


def test_throttle_leading_edge_then_at_most_once_per_interval() -> None:
    throttle = Throttle(interval_s=1.0)
    assert throttle.delay(100.0) == 0  # first change: at once
    throttle.sent(100.0)
    assert throttle.delay(100.2) == pytest.approx(0.8)  # coalesced until the interval is over
    assert throttle.delay(100.9) == pytest.approx(0.1)
    throttle.sent(101.0)
    assert throttle.delay(103.5) == 0  # a change after a quiet interval: at once again


def frames() -> BoardFrames:
    entries = [
        FrameEntry(rank=1, user_id="ada", name="Ada", score=42),
        FrameEntry(rank=2, user_id="bo", name="Bo", score=7),
    ]
    return BoardFrames("global", 17, entries, "2026-11-23T10:00:00.000Z")


def parse_sse(frame: bytes) -> dict[str, str]:
    assert frame.endswith(b"\n\n")
    fields = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
    return fields


def test_board_frames_encode_one_payload_for_every_transport() -> None:
    f = frames()
    snapshot, update = parse_sse(f.snapshot), parse_sse(f.update)
    assert (snapshot["id"], snapshot["event"], update["event"]) == ("17", "snapshot", "update")
    assert snapshot["data"] == update["data"]
    data = json.loads(update["data"])
    assert data == {
        "board": "global",
        "version": 17,
        "timestamp": "2026-11-23T10:00:00.000Z",
        "leaderboard": [
            {"rank": 1, "userId": "ada", "name": "Ada", "score": 42},
            {"rank": 2, "userId": "bo", "name": "Bo", "score": 7},
        ],
    }
    assert json.loads(f.ws_text) == {"type": "leaderboard", **data}


def test_a_ws_text_frame_is_unmasked_with_the_shortest_length_encoding() -> None:
    assert ws_text_frame(b"hello") == b"\x81\x05hello"
    assert ws_text_frame(b"x" * 125) == b"\x81\x7d" + b"x" * 125
    assert ws_text_frame(b"x" * 126) == b"\x81\x7e\x00\x7e" + b"x" * 126
    assert ws_text_frame(b"x" * 70_000) == b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70" + b"x" * 70_000
    f = frames()
    assert f.ws_frame == b"\x81\x7e" + len(f.ws_text).to_bytes(2, "big") + f.ws_text.encode()


def test_lifecycle_allows_only_legal_moves() -> None:
    life = Lifecycle()
    assert life.state is State.CONNECTING
    with pytest.raises(IllegalTransition):
        life.move(State.DRAINING)
    life.move(State.OPEN)
    assert life.open
    life.move(State.DRAINING)
    with pytest.raises(IllegalTransition) as raised:
        life.move(State.OPEN)
    assert (raised.value.current, raised.value.target) == (State.DRAINING, State.OPEN)
    life.move(State.CLOSED)
    with pytest.raises(IllegalTransition):
        life.move(State.CLOSED)


def test_outbox_keeps_only_the_newest_frame_per_board() -> None:
    outbox = Outbox(limit=2)
    assert not outbox
    assert outbox.put_board("global", "v1") is False
    assert outbox.put_board("global", "v2") is True  # v1 was never sent: dropped
    assert outbox.put_board("weekly", "w1") is False
    assert outbox.put("ack 1") and outbox.put("ack 2")
    assert outbox.put("ack 3") is False  # bounded
    assert outbox.take() == ["ack 1", "ack 2", "v2", "w1"]
    assert not outbox
    assert outbox.take() == []


def test_outbox_is_used_again_after_take_and_drops_a_board() -> None:
    outbox = Outbox(limit=2)
    outbox.put_board("global", "v1")
    outbox.drop_board("global")  # a snapshot went out another way
    outbox.drop_board("weekly")  # never queued: nothing to drop
    assert not outbox
    assert outbox.take() == []
    for round_ in range(2):  # the bound holds after a take as before it
        assert outbox.put(f"a{round_}") and outbox.put(f"b{round_}")
        assert outbox.put(f"c{round_}") is False
        outbox.put_board("global", f"v{round_}")
        assert outbox.take() == [f"a{round_}", f"b{round_}", f"v{round_}"]
    # An idle outbox keeps no containers: most connections are idle (bench/RESULTS.md, memory).
    assert (outbox.queue, outbox.boards) == (None, None)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.4) is False
    assert bucket.allow(0.5) is True  # one token back after 0.5 s at 2/s
    assert bucket.allow(100.0) and bucket.allow(100.0) and bucket.allow(100.0)
    assert bucket.allow(100.0) is False  # never more than the burst


def test_an_ack_is_the_encoded_message() -> None:
    for seq in (0, 7, 2**31, 2**53):
        assert ack_text(seq) == encode(Ack(seq=seq))
