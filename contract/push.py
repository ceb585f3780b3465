"""What the gateway exchanges with its clients (API.md's "gateway"): WebSocket messages both ways,
the data of SSE events, and their decoders (built once: the gateway's hottest path).

WebSocket messages are tagged unions on ``type``: :data:`ClientMessage` (client → gateway, inputs
with bounds) and :data:`ServerMessage` (gateway → client).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contract.wire import BoardName, Input, KeyId, Output, Seconds, Seq


# ---------------------------------------------------------------- SSE event data (and WS frames)
class FrameEntry(Output):
    rank: int
    user_id: str
    name: str
    score: int


class BoardSnapshot(Output):
    """The payload of an SSE snapshot/update event."""

    board: str
    version: int
    timestamp: str
    leaderboard: list[FrameEntry]


class RankUpdate(Output):
    """The data of an SSE ``rank`` event: the viewer's own place on a board it follows.

    ``rank`` and ``score`` are null while the viewer is not ranked; ``gapToNext`` (points to the
    next rank up) is null then and at #1. No field has a default: nulls are always sent.
    """

    board: str
    version: int
    rank: int | None
    score: int | None
    gap_to_next: int | None


# ---------------------------------------------------------------- WebSocket, client → gateway
class WsInput(Input, tag_field="type"):
    pass


class Subscribe(WsInput, tag="subscribe"):
    board: BoardName


class Unsubscribe(WsInput, tag="unsubscribe"):
    board: BoardName


class ProgressPing(WsInput, tag="progress"):
    course_id: KeyId
    lecture_id: KeyId
    position: Seconds
    seq: Seq
    duration: Annotated[float, Meta(gt=0, le=86_400)] | None = None


class Ping(WsInput, tag="ping"):
    pass


class PingSeq(msgspec.Struct):
    """What can be read of a refused message that looks like a progress ping: its seq."""

    type: str
    seq: Seq


ClientMessage = Subscribe | Unsubscribe | ProgressPing | Ping


# ---------------------------------------------------------------- WebSocket, gateway → client
class WsOutput(Output, tag_field="type"):
    pass


class LeaderboardMessage(WsOutput, tag="leaderboard"):
    board: str
    version: int
    timestamp: str
    leaderboard: list[FrameEntry]


class RankMessage(WsOutput, tag="rank"):
    """The WebSocket form of :class:`RankUpdate`."""

    board: str
    version: int
    rank: int | None
    score: int | None
    gap_to_next: int | None


class ProgressMessage(WsOutput, tag="progress"):
    course_id: str
    lecture_id: str
    position: float
    seq: int


class Ack(WsOutput, tag="ack"):
    seq: int


class Pong(WsOutput, tag="pong"):
    pass


class ErrorMessage(WsOutput, tag="error"):
    code: str
    message: str
    seq: int | None = None  # the refused progress ping's seq, so the client stops resending it


class Unsubscribed(WsOutput, tag="unsubscribed"):
    board: str


class ReconnectMessage(WsOutput, tag="reconnect"):
    after_ms: int


ServerMessage = (
    LeaderboardMessage
    | RankMessage
    | ProgressMessage
    | Ack
    | Pong
    | ErrorMessage
    | Unsubscribed
    | ReconnectMessage
)

# Built once, reused for every message.
client_message_decoder = msgspec.json.Decoder(ClientMessage)
ping_seq_decoder = msgspec.json.Decoder(PingSeq)
server_message_decoder = msgspec.json.Decoder(ServerMessage)

ErrorCode = Literal[
    "bad_request",
    "invalid_json",
    "invalid_message",
    "invalid_board",
    "message_too_large",
    "rate_limited",
    "forbidden",
    "unauthorized",
    "token_expired",
    "unavailable",
]
