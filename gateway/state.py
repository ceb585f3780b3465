"""Shared runtime state of one gateway process, built by the lifespan and handed to endpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import HTTPConnection

from contract.auth import TokenVerifier
from contract.settings import Settings
from gateway.hub import Hub
from gateway.listener import Listener
from gateway.metrics import Metrics
from gateway.policy import BoardPolicy
from gateway.presence import Presence
from gateway.progress import ProgressWriter
from gateway.sharded import ShardedListener


@dataclasses.dataclass(kw_only=True)
class GatewayState:
    settings: Settings
    redis: Any
    verifier: TokenVerifier
    metrics: Metrics
    hub: Hub
    listener: Listener | ShardedListener
    writer: ProgressWriter
    policy: BoardPolicy
    presence: Presence


def gateway_state(connection: HTTPConnection) -> GatewayState:
    found: GatewayState = connection.app.state.gateway
    return found
