"""The parts every wire message is made of: field types with their bounds, the ``Input`` and
``Output`` bases, and the one JSON encoder.

Wire names are camelCase (``rename="camel"``); inputs forbid unknown fields and carry bounds,
so a ``msgspec.ValidationError`` at a boundary becomes a 4xx or a WebSocket ``error`` message.
The messages themselves live by audience: :mod:`contract.bodies` (the ingest HTTP API),
:mod:`contract.push` (the gateway's WebSocket and SSE clients) and :mod:`contract.events` (what
services put on streams and Pub/Sub).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
# Course and lecture ids become MongoDB field names (``w_<lectureId>``): no dots, no dollars.
KEY_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
KeyId = Annotated[str, Meta(pattern=KEY_PATTERN)]
ActionId = Annotated[str, Meta(pattern=UUID_PATTERN)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=64)]
Region = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{1,32}$")]
Url = Annotated[str, Meta(max_length=512)]
Seconds = Annotated[float, Meta(ge=0, le=86_400)]
Seq = Annotated[int, Meta(ge=0, le=2**53)]
BoardName = Annotated[str, Meta(min_length=1, max_length=100)]


class Input(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Base of every message a client sends."""


class Output(msgspec.Struct, rename="camel", omit_defaults=True):
    """Base of every message Scorecast sends."""


# Built once, reused everywhere.
json_encoder = msgspec.json.Encoder()
