"""Prometheus metrics of one ingest API process, on its own registry (``GET /metrics``).

- ``scorecast_score_writes_total{endpoint, outcome}``: score writes (``scores``: POST
  /scores/update; ``quiz``: POST /quiz/submit) by outcome: ``accepted``, ``duplicate``,
  ``graded`` (a quiz that earned nothing new), ``rate_limited`` (the scored user's bucket),
  ``region_limited`` (the bucket of the scored user's region), ``queue_full``, ``blocked``,
  ``forbidden``, ``unauthorized``, ``invalid`` (4xx input), ``error`` (anything else). Counted
  by this process.
- ``scorecast_auth_failures_total{code}``: requests answered 401 (every endpoint), by error code;
  ``scorecast_rate_limit_violations_total{code}``: requests answered 429 for a rate limit, by
  code (``queue_full`` is back-pressure, not a violation: see ``scorecast_score_writes_total``).
  Seed 004's security metrics, counted by this process.
- ``scorecast_flags_raised_total{rule}``, ``scorecast_flags_open``,
  ``scorecast_blocks_applied_total``, ``scorecast_blocks_active``: read from MongoDB's ``flags``
  at each scrape. Flags are raised by the worker (any replica), so their durable count is the
  one every API replica reports alike (a dashboard takes ``max`` over replicas, not ``sum``);
  it survives restarts of every process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from contract.errors import (
    AuthError,
    BadRequest,
    Forbidden,
    ScorecastError,
    TemporarilyBlocked,
    TooManyRequests,
)
from contract.http import error_for
from ingest import store
from ingest.anomaly import OPEN, RULES

Endpoint = Callable[[Request], Awaitable[Response]]
OUTCOMES = (
    "accepted", "duplicate", "graded", "rate_limited", "region_limited", "queue_full", "blocked",
    "forbidden",
    "unauthorized", "invalid", "error",
)  # fmt: skip


@dataclasses.dataclass
class FlagCounts:
    raised: dict[str, int] = dataclasses.field(default_factory=dict)
    open: int = 0
    blocks_applied: int = 0
    blocks_active: int = 0


class FlagCollector(Collector):
    """Exports the counts last read by :meth:`IngestMetrics.refresh`."""

    def __init__(self) -> None:
        self.counts = FlagCounts()

    def collect(self) -> Iterator[Metric]:
        raised = CounterMetricFamily(
            "scorecast_flags_raised", "Anomaly flags raised, by rule", labels=["rule"]
        )
        for rule in RULES:
            raised.add_metric([rule], self.counts.raised.get(rule, 0))
        yield raised
        yield GaugeMetricFamily(
            "scorecast_flags_open", "Anomaly flags not cleared yet", value=self.counts.open
        )
        yield CounterMetricFamily(
            "scorecast_blocks_applied",
            "Flags that blocked a user from scoring",
            value=self.counts.blocks_applied,
        )
        yield GaugeMetricFamily(
            "scorecast_blocks_active", "Users blocked from scoring now", value=self.counts.blocks_active
        )


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.score_writes = Counter(
            "scorecast_score_writes",
            "Score writes by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        for endpoint in ("scores", "quiz"):
            for outcome in OUTCOMES:
                self.score_writes.labels(endpoint, outcome)
        self.auth_failures = Counter(
            "scorecast_auth_failures",
            "Requests refused 401, by error code (unauthorized, invalid_token, token_expired, ...)",
            ["code"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "scorecast_rate_limit_violations",
            "Requests refused 429 for going over a rate limit, by error code (not queue_full)",
            ["code"],
            registry=self.registry,
        )
        for code in ("unauthorized", "invalid_token", "token_expired"):
            self.auth_failures.labels(code)
        self.rate_limited.labels("rate_limited")
        self.flags = FlagCollector()
        self.registry.register(self.flags)

    async def refresh(self, db: Any) -> None:
        """Read the flag counts from MongoDB (one count per rule, two for blocks)."""
        flags = db[store.FLAGS]
        counts = FlagCounts()
        for rule in RULES:
            counts.raised[rule] = await flags.count_documents({"rule": rule})
        counts.open = await flags.count_documents({"status": OPEN})
        counts.blocks_applied = await flags.count_documents({"blockedUntilMs": {"$gt": 0}})
        now_ms = int(time.time() * 1000)
        active = {
            d["userId"]
            async for d in flags.find({"status": OPEN, "blockedUntilMs": {"$gt": now_ms}}, {"userId": 1})
        }
        counts.blocks_active = len(active)
        self.flags.counts = counts

    def count_refusal(self, exc: BaseException) -> None:
        """Count ``exc`` when it refuses a request for its token (401) or a rate limit (429, not
        ``queue_full``: back-pressure is no violation). REST and GraphQL answers alike."""
        if isinstance(exc, AuthError):
            self.auth_failures.labels(exc.code).inc()
        elif isinstance(exc, TooManyRequests) and exc.code != "queue_full":
            self.rate_limited.labels(exc.code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def outcome_of(response: Response | None, exc: BaseException | None) -> str:
    if exc is not None:
        if isinstance(exc, TooManyRequests):
            if exc.code == "rate_limited" and exc.bucket == "region":
                return "region_limited"
            return exc.code if exc.code in ("rate_limited", "queue_full") else "rate_limited"
        if isinstance(exc, TemporarilyBlocked):
            return "blocked"
        if isinstance(exc, Forbidden):
            return "forbidden"
        if isinstance(exc, AuthError):
            return "unauthorized"
        if isinstance(exc, BadRequest) or (isinstance(exc, ScorecastError) and 400 <= exc.status < 500):
            return "invalid"
        return "error"
    assert response is not None
    if response.status_code == 202:
        return "accepted"
    if response.status_code == 200:
        try:
            status = json.loads(bytes(response.body)).get("status")
        except ValueError:
            status = None
        return outcome_of_status(status)
    return "error"


def outcome_of_status(status: str | None) -> str:
    """The outcome of an answered write by its ``status`` (``queued``, ``duplicate``, ``graded``)."""
    return {"queued": "accepted", "duplicate": "duplicate"}.get(status or "", "graded")


def counted(endpoint: str, handler: Endpoint) -> Endpoint:
    """``handler`` with each call counted in ``scorecast_score_writes_total``."""

    async def wrapper(request: Request) -> Response:
        metrics: IngestMetrics = request.app.state.metrics
        try:
            response = await handler(request)
        except Exception as exc:
            metrics.score_writes.labels(endpoint, outcome_of(None, exc)).inc()
            raise
        metrics.score_writes.labels(endpoint, outcome_of(response, None)).inc()
        return response

    return wrapper


def count_refusals(app: Starlette) -> None:
    """Count every 401 and rate-limit 429 ``app`` answers, then answer as before. Call after
    ``install_error_handlers`` (this replaces its ScorecastError handler and delegates to it)."""

    async def handler(request: Request, exc: Exception) -> Response:
        metrics: IngestMetrics = request.app.state.metrics
        metrics.count_refusal(exc)
        return await error_for(request, exc)

    app.add_exception_handler(ScorecastError, handler)


async def metrics_endpoint(request: Request) -> Response:
    metrics: IngestMetrics = request.app.state.metrics
    await metrics.refresh(request.app.state.ingest.mongo)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
