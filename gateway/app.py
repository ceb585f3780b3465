"""The gateway application: routes, and one lifespan that owns Redis, the hub and the listener.

Shutdown is ordered (see ``gateway.__main__``): readiness fails, every client is told to
reconnect and its stream ended (``Hub.drain``), then the listener, the progress writer and the
Redis client close.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from contract.auth import TokenVerifier
from contract.http import JSONResponse, install_error_handlers
from contract.settings import Settings
from gateway import fastpath, sse, ws
from gateway.hub import Hub, utc_now
from gateway.listener import Listener
from gateway.metrics import Metrics
from gateway.policy import BoardPolicy
from gateway.presence import Presence
from gateway.progress import ProgressWriter
from gateway.sharded import ShardedListener
from gateway.state import GatewayState, gateway_state
from store import outage
from store.archive import ArchiveCache
from store.clients import initialized, redis_client
from store.courses import CourseCatalog
from store.progress import ProgressStore

log = logging.getLogger("scorecast.gateway")
WS_PATH = "/api/v1/ws"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


READY_TIMEOUT_S = 2.0  # a readiness probe's answer, every master probed at once


async def readyz(request: Request) -> Response:
    st = gateway_state(request)
    if st.hub.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            answering, masters = await outage.masters_answering(st.redis)
    except Exception:
        answering, masters = 0, 0
    if not answering:
        return JSONResponse({"status": "redis unreachable"}, status_code=503)
    return JSONResponse(
        {"status": "ready", "connections": len(st.hub.connections), "redisMasters": f"{answering}/{masters}"}
    )


async def metrics(request: Request) -> Response:
    body = gateway_state(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def config(request: Request) -> Response:
    """What the pages need to know: where the ingest API is."""
    return JSONResponse({"ingestUrl": gateway_state(request).settings.public_ingest_url})


def fast_path(settings: Settings, *, say: bool = True) -> bool:
    """Whether this process uses gateway.fastpath: FAST_PATH on, and the installed libraries have
    the shape it was checked against (else, with ``say``, a log line says why)."""
    if not settings.fast_path:
        if say:
            log.info("fast path off (FAST_PATH=0): serving through the portable ASGI and redis-py paths")
        return False
    why = fastpath.unavailable()
    if why is not None:
        if say:
            log.warning("fast path off (%s): serving through the portable ASGI and redis-py paths", why)
        return False
    if say:
        checked = ", ".join(f"{name} {version}" for name, version in fastpath.CHECKED.items())
        log.info("fast path on (gateway/fastpath/, checked against %s)", checked)
    return True


def create_app(settings: Settings, *, now: Callable[[], dt.datetime] = utc_now) -> Starlette:
    """The gateway app; ``now`` is its clock for the periods ``weekly``/``monthly`` name (tests
    move it past a period's end instead of waiting)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = await initialized(redis_client(settings.redis_url, cluster=settings.redis_cluster))
        # MongoDB for course metadata on a cache miss (see contract.courses) and for progress
        # hashes that expired.
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
        metrics_ = Metrics()
        # The archives of closed periods (a named week or month whose keys expired): one
        # MongoDB read per board per process, as many kept as past periods can be followed.
        archives = ArchiveCache(
            mongo[settings.mongo_db],
            size=settings.board_weeks_back + settings.board_months_back,
            miss_ttl_s=settings.archive_miss_ttl_s,
        )
        hub = Hub(redis=redis, settings=settings, metrics=metrics_, now=now, archives=archives)
        # On a Redis Cluster events travel on sharded Pub/Sub: one subscription per master.
        listener: Listener | ShardedListener = (
            ShardedListener(settings.redis_url, hub, probe_interval_s=settings.outage_probe_interval_s)
            if settings.redis_cluster
            else Listener(redis, hub, probe_interval_s=settings.outage_probe_interval_s)
        )
        # MongoDB also refills a progress hash that expired (the lock needs its completions).
        fast = fast_path(settings)
        store = ProgressStore.of(
            redis,
            settings,
            db=mongo[settings.mongo_db],
            round_trip=fastpath.redis_round_trip if fast else None,
        )
        catalog = CourseCatalog(
            redis,
            mongo[settings.mongo_db],
            ttl_s=settings.course_meta_ttl_s,
            max_entries=settings.course_cache_max_entries,
            max_unknown=settings.course_cache_max_unknown,
        )
        writer = ProgressWriter(
            store,
            catalog,
            round_trips=metrics_.ping_round_trips,
            stored=metrics_.pings,
            implausible=metrics_.implausible_advances,
            window_s=settings.ping_batch_window_ms / 1000,
        )
        app.state.gateway = GatewayState(
            settings=settings,
            redis=redis,
            verifier=TokenVerifier(settings),
            metrics=metrics_,
            hub=hub,
            listener=listener,
            writer=writer,
            policy=BoardPolicy(settings, catalog, now=now),
            presence=Presence(redis),
        )
        hub.fast_path = fast
        hub.start()
        listener.start()
        await writer.start()
        try:
            yield
        finally:
            await hub.drain(0)
            await listener.close()
            await hub.close()
            await writer.close()
            await app.state.gateway.presence.close()
            await redis.aclose()
            await mongo.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/v1/config", config),
        *(Route(path, sse.stream) for path in sse.STREAM_PATHS),
        WebSocketRoute(WS_PATH, ws.endpoint),
    ]
    if settings.static_dir and os.path.isdir(settings.static_dir):
        routes.append(Mount("/", StaticFiles(directory=settings.static_dir, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=lifespan)
    install_error_handlers(app)
    return app
