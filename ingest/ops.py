"""The operations port of the worker and the flusher: ``/metrics``, ``/healthz``, ``/readyz``.

Neither process serves HTTP otherwise, so :class:`OpsServer` is a tiny asyncio server of its own
(``asyncio.start_server``): it reads one ``GET`` request line and its headers, answers, and closes
the connection (HTTP/1.0 style; Prometheus and kubelet probes need nothing more). It listens on
``metrics_host``:``worker_metrics_port`` / ``flusher_metrics_port`` (0: no server).

- ``/metrics``: Prometheus text of the process's registry; gauges read from Redis (stream backlog,
  consumer lag, dirty keys) are refreshed first, within ``READ_TIMEOUT_S`` (on failure the last
  values are served and ``scorecast_ops_refresh_failures_total`` counts it).
- ``/healthz``: 200 while the event loop answers.
- ``/readyz``: 200 while Redis and MongoDB answer their probes (``store.outage``, bounded),
  else 503 naming the first unreachable one.

Metrics (see the README's Operations section): :class:`ConsumerMetrics` for the stream consumers
of the worker, :class:`FlusherMetrics` for the flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contract import keys
from store import outage
from store.streams import backlog

log = logging.getLogger(__name__)

# A scrape or probe waits at most this long for Redis; a request line and headers for this long.
READ_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 8192
TEXT = "text/plain; version=0.0.4; charset=utf-8"
Refresh = Callable[[], Awaitable[None]]

# From the entry's id (the time the API appended it) to the batch being acknowledged.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FLUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def entry_age_s(entry_id: str, now_s: float) -> float:
    """Seconds since the entry ``<ms>-<seq>`` was appended (Redis's clock in the id; ours now)."""
    return max(0.0, now_s - int(entry_id.split("-", 1)[0]) / 1000)


class ConsumerMetrics:
    """Metrics of the stream consumers of one worker process, by stream. ``streams`` maps each
    stream key consumed to (the stream it is a partition of, its consumer group): the partitions
    of a stream (``keys.partitions``) are summed under the stream's name."""

    def __init__(self, redis: Any, streams: Mapping[str, tuple[str, str]]) -> None:
        self.redis = redis
        self.streams = dict(streams)
        self.groups = {family: group for family, group in self.streams.values()}
        self.registry = CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "scorecast_stream_entries_processed",
            "Stream entries handled and acknowledged",
            ["stream"],
            registry=r,
        )
        self.latency = Histogram(
            "scorecast_stream_processing_seconds",
            "From an entry's append (its id) to its batch being applied and acknowledged",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "scorecast_stream_dead_lettered",
            "Entries copied to the dead-letter stream (poison, or delivered too often)",
            ["stream"],
            registry=r,
        )
        self.batch_failures = Counter(
            "scorecast_stream_batch_failures",
            "Batches whose handler raised (retried)",
            ["stream"],
            registry=r,
        )
        self.rescued = Counter(
            "scorecast_stream_rescued_entries",
            "Pending entries claimed from consumers whose heartbeat ran out",
            ["stream"],
            registry=r,
        )
        self.backlog = Gauge(
            "scorecast_stream_backlog",
            "Entries the slowest group has not finished (lag + pending)",
            ["stream"],
            registry=r,
        )
        self.lag = Gauge(
            "scorecast_stream_consumer_lag",
            "Entries not yet delivered to the consumer group",
            ["stream", "group"],
            registry=r,
        )
        self.pending = Gauge(
            "scorecast_stream_pending",
            "Entries delivered to the group and not acknowledged yet",
            ["stream", "group"],
            registry=r,
        )
        self.refresh_failures = _refresh_failures(r)
        for stream, group in self.groups.items():
            for by_stream in (self.processed, self.dead_lettered, self.batch_failures, self.rescued):
                by_stream.labels(stream)
            self.latency.labels(stream)
            self.backlog.labels(stream)
            self.lag.labels(stream, group)
            self.pending.labels(stream, group)

    def handled(self, stream: str, entry_ids: Collection[str]) -> None:
        now = time.time()
        self.processed.labels(stream).inc(len(entry_ids))
        latency = self.latency.labels(stream)
        for entry_id in entry_ids:
            latency.observe(entry_age_s(entry_id, now))

    async def refresh(self) -> None:
        """Read every stream's backlog and its group's lag and pending count from Redis (summed
        over its partitions)."""
        totals = {family: [0, 0, 0] for family in self.groups}  # backlog, lag, pending
        for stream, (family, group) in self.streams.items():
            found = await backlog(self.redis, stream)
            total = totals[family]
            total[0] += found
            infos = await self.redis.xinfo_groups(stream) if await self.redis.exists(stream) else []
            for g in infos:
                if _text(g.get("name")) != group:
                    continue
                # lag is nil where Redis cannot tell it (entries deleted past the group): the
                # backlog bounds it then.
                lag = g.get("lag")
                total[1] += int(lag) if lag is not None else found
                total[2] += int(g.get("pending") or 0)
        for family, (found, lag, pending) in totals.items():
            group = self.groups[family]
            self.backlog.labels(family).set(found)
            self.lag.labels(family, group).set(lag)
            self.pending.labels(family, group).set(pending)


class FlusherMetrics:
    """Metrics of one flusher process."""

    def __init__(self, redis: Any, *, buckets: Sequence[tuple[str, str]] = keys.dirty_buckets(1)) -> None:
        self.redis = redis
        self.buckets = buckets  # (dirty, in flight) key pairs: the gauges sum them
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram(
            "scorecast_flush_seconds",
            "Duration of a successful flush cycle",
            buckets=FLUSH_BUCKETS,
            registry=r,
        )
        self.keys_flushed = Counter(
            "scorecast_flush_keys", "Progress keys written to MongoDB and finished", registry=r
        )
        self.failures = Counter("scorecast_flush_failures", "Flush cycles that failed", registry=r)
        self.partial = Counter(
            "scorecast_flush_partial",
            "Flush cycles that left keys for later: their Redis Cluster master did not answer",
            registry=r,
        )
        self.left_keys = Counter(
            "scorecast_flush_left_keys",
            "Progress keys a cycle left dirty or in flight for later: their master did not answer",
            registry=r,
        )
        self.left_buckets = Counter(
            "scorecast_flush_left_buckets",
            "Dirty buckets a cycle did not drain: their master did not answer",
            registry=r,
        )
        self.dirty = Gauge(
            "scorecast_flush_dirty_keys",
            "Progress keys waiting for a flush: dirty, or in flight (taken, not finished)",
            ["set"],
            registry=r,
        )
        self.refresh_failures = _refresh_failures(r)
        for name in ("dirty", "inflight"):
            self.dirty.labels(name)

    def flushed(self, count: int, seconds: float, *, left_keys: int = 0, left_buckets: int = 0) -> None:
        """A cycle that did not fail wrote ``count`` keys in ``seconds`` and left ``left_keys``
        keys and ``left_buckets`` buckets of a master down for later."""
        self.keys_flushed.inc(count)
        self.duration.observe(seconds)
        if left_keys or left_buckets:
            self.partial.inc()
            self.left_keys.inc(left_keys)
            self.left_buckets.inc(left_buckets)

    async def refresh(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for dirty, inflight in self.buckets:
            pipe.scard(dirty)
            pipe.scard(inflight)
        sizes = await pipe.execute()
        self.dirty.labels("dirty").set(sum(sizes[0::2]))
        self.dirty.labels("inflight").set(sum(sizes[1::2]))


def _refresh_failures(registry: CollectorRegistry) -> Counter:
    return Counter(
        "scorecast_ops_refresh_failures",
        "Scrapes that served the last gauge values because Redis did not answer",
        registry=registry,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host``:``port`` (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        refresh: Refresh,
        refresh_failures: Counter,
        services: Sequence[outage.Service],
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.refresh = refresh
        self.refresh_failures = refresh_failures
        self.services = list(services)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("metrics, healthz and readyz on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), READ_TIMEOUT_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                await _respond(writer, 400, _error("bad_request", "a GET request line and headers"))
                return
            status, content_type, body = await self._answer(method, path)
            await _respond(writer, status, body, content_type)
        except (ConnectionError, OSError):
            pass  # the scraper went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return 404, "application/json", _error("not_found", f"no such endpoint: {path}")
        if method != "GET":
            return 405, "application/json", _error("method_not_allowed", "only GET")
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            down = await outage.first_unreachable(self.services)
            if down is not None:
                body = json.dumps({"status": f"{down[0].name} unreachable"}).encode()
                return 503, "application/json", body
            return 200, "application/json", b'{"status":"ready"}'
        try:
            await asyncio.wait_for(self.refresh(), READ_TIMEOUT_S)
        except Exception as exc:
            self.refresh_failures.inc()
            log.debug("metrics refresh failed: %s", exc)
        return 200, TEXT, generate_latest(self.registry)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of the request; its headers are read and ignored."""
    line = await reader.readuntil(b"\n")
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        raise ValueError("no request line")
    size = len(line)
    while True:
        header = await reader.readuntil(b"\n")
        size += len(header)
        if size > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
        if header in (b"\r\n", b"\n"):
            return parts[0].upper(), parts[1]


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
}  # fmt: skip


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "application/json"
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


async def serve(
    *,
    host: str,
    port: int,
    registry: CollectorRegistry,
    refresh: Refresh,
    refresh_failures: Counter,
    services: Sequence[outage.Service],
) -> OpsServer | None:
    """Start the operations server, or nothing when ``port`` is 0."""
    if not port:
        return None
    server = OpsServer(
        host=host, port=port, registry=registry, refresh=refresh, refresh_failures=refresh_failures,
        services=services,
    )  # fmt: skip
    await server.start()
    return server
