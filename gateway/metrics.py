"""Prometheus metrics of one gateway process, on its own registry.

``scorecast_gateway_connections{transport}`` is what the Kubernetes HPA scales on (through
prometheus-adapter; see deploy/k8s/gateway-autoscaling.yaml).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "scorecast_gateway_connections", "Open client connections", ["transport"], registry=self.registry
        )
        self.messages = Counter(
            "scorecast_gateway_messages", "Frames written to clients", ["transport"], registry=self.registry
        )
        self.frames = Counter(
            "scorecast_gateway_board_frames", "Board frames handed to subscribers", registry=self.registry
        )
        self.drops = Counter(
            "scorecast_gateway_dropped_frames",
            "Board frames replaced by a newer one before a slow client took them",
            registry=self.registry,
        )
        self.slow_disconnects = Counter(
            "scorecast_gateway_slow_client_disconnects",
            "Clients disconnected because they could not keep up",
            registry=self.registry,
        )
        self.broadcast_seconds = Histogram(
            "scorecast_gateway_broadcast_seconds",
            "Time to read a board and hand its frame to every subscriber",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.pings = Counter(
            "scorecast_gateway_progress_pings", "Autosave pings stored", registry=self.registry
        )
        self.ping_round_trips = Counter(
            "scorecast_gateway_progress_round_trips",
            "Pipelined Redis round trips that stored autosave pings (pings per round trip = batching)",
            registry=self.registry,
        )
        self.implausible_advances = Counter(
            "scorecast_gateway_progress_implausible_advances",
            "Pings that advanced faster than real time (seeks, or cheating): not counted as watched",
            registry=self.registry,
        )
        self.rank_lookups = Counter(
            "scorecast_gateway_rank_lookups",
            "Viewers' own places read from Redis (one viewer on one board each)",
            registry=self.registry,
        )
        self.rank_frames = Counter(
            "scorecast_gateway_rank_frames", "Rank events handed to connections", registry=self.registry
        )
        self.rank_tick_seconds = Histogram(
            "scorecast_gateway_rank_tick_seconds",
            "Time of one rank tick: its lookups read from Redis and their events handed over",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.rank_own_lookups = Counter(
            "scorecast_gateway_rank_own_lookups",
            "Lookups of the own lane (viewers whose own score changed, read at once; also counted "
            "in scorecast_gateway_rank_lookups)",
            registry=self.registry,
        )
        self.rank_own_seconds = Histogram(
            "scorecast_gateway_rank_own_seconds",
            "One pass of the own lane: from the first board event it serves to its rank events handed over",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.rank_backlog = Gauge(
            "scorecast_gateway_rank_backlog",
            "Viewers whose own score changed, waiting for rank lookup budget",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "scorecast_gateway_auth_failures",
            "Connections refused for a missing, bad or expired token, and sessions ended by expiry",
            ["transport", "code"],
            registry=self.registry,
        )
        self.violations = Counter(
            "scorecast_gateway_ws_violations",
            "WebSocket messages refused: rate_limited, too_large, too_many_boards, bad messages",
            ["code"],
            registry=self.registry,
        )
        for transport in ("sse", "ws"):  # exported at 0 before the first one
            for code in ("unauthorized", "invalid_token", "token_expired"):
                self.auth_failures.labels(transport, code)
        self.violations.labels("rate_limited")
        self.resyncs = Counter(
            "scorecast_gateway_pubsub_resyncs",
            "Pub/Sub subscriptions (re)established, after which their boards were read again",
            registry=self.registry,
        )
        self.pubsub_messages = Counter(
            "scorecast_gateway_pubsub_messages",
            "Board and user events received over Pub/Sub (one per event per gateway, never per client)",
            registry=self.registry,
        )
        self.shards_subscribed = Gauge(
            "scorecast_gateway_pubsub_shards",
            "Redis Cluster masters this gateway holds a sharded Pub/Sub subscription on (0: classic)",
            registry=self.registry,
        )
        for transport in ("sse", "ws"):
            self.connections.labels(transport)
            self.messages.labels(transport)

    def render(self) -> bytes:
        return generate_latest(self.registry)
