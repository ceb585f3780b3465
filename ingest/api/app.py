"""The ingest API application: routes of every module, one lifespan owning the clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contract.auth import TokenIssuer, TokenVerifier
from contract.http import JSONResponse, install_error_handlers
from contract.settings import Settings
from ingest import store
from ingest.api import admin, auth, courses, heatmap, leaderboards, progress, quiz, scores, stats
from ingest.api.client import parse_networks
from ingest.api.graph_http import GraphView
from ingest.api.metrics import IngestMetrics, count_refusals, metrics_endpoint
from ingest.api.state import IngestState, state
from ingest.api.users import KnownUsers
from store import outage
from store.boards import BoardStore
from store.clients import initialized, redis_client
from store.courses import CourseCatalog
from store.progress import ProgressStore
from store.streams import BacklogGauge


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready while MongoDB and Redis answer (on a Redis Cluster: one master at least, see
    ``store.outage.masters_answering``); Kubernetes stops routing here otherwise."""
    st = state(request)
    try:
        answering, masters = await asyncio.wait_for(outage.masters_answering(st.redis), READY_TIMEOUT_S)
    except Exception:
        answering, masters = 0, 0
    if not answering:
        return JSONResponse({"status": "redis unreachable"}, status_code=503)
    try:
        # Bounded: pymongo would wait 30 s for a server, far past any probe's timeout.
        await asyncio.wait_for(st.mongo.command("ping"), READY_TIMEOUT_S)
    except Exception:
        return JSONResponse({"status": "mongodb unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "redisMasters": f"{answering}/{masters}"})


MONGO_MIN_POOL_SIZE = 16
READY_TIMEOUT_S = 2.0


def create_app(settings: Settings) -> Starlette:
    trusted_proxies = parse_networks(settings.trusted_proxies)  # a bad entry fails at start

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = await initialized(redis_client(settings.redis_url, cluster=settings.redis_cluster))
        # Connections kept open ahead of need: pymongo opens at most two at a time, so a first
        # burst of concurrent requests would otherwise queue behind connection handshakes.
        mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url, minPoolSize=MONGO_MIN_POOL_SIZE
        )
        db = mongo_client[settings.mongo_db]
        await store.ensure_indexes(db)
        boards = BoardStore(redis, guard_ttl_s=settings.action_guard_ttl_s)
        app.state.ingest = IngestState(
            settings=settings,
            redis=redis,
            mongo=db,
            boards=boards,
            issuer=TokenIssuer.optional(settings),
            verifier=TokenVerifier(settings),
            progress=ProgressStore.of(redis, settings, db=db),
            catalog=CourseCatalog(
                redis,
                db,
                ttl_s=settings.course_meta_ttl_s,
                max_entries=settings.course_cache_max_entries,
                max_unknown=settings.course_cache_max_unknown,
            ),
            backlog=BacklogGauge(redis, max_age_s=settings.queue_backlog_max_age_s),
            trusted_proxies=trusted_proxies,
            users=KnownUsers(boards, db, ttl_s=settings.user_cache_ttl_s),
        )
        try:
            yield
        finally:
            await redis.aclose()
            await mongo_client.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *auth.routes,
        *scores.routes,
        *leaderboards.routes,
        *quiz.routes,
        *courses.routes,
        *heatmap.routes,
        *progress.routes,
        *stats.routes,
        *admin.routes,
        # Seed 004's GraphQL API over the same service layer (REST stays the primary API).
        Route("/graphql", GraphView(settings), methods=["GET", "POST"]),
    ]
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["authorization", "content-type"],
            allow_credentials=True,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.metrics = IngestMetrics()
    install_error_handlers(app)
    count_refusals(app)
    return app
