"""``/graphql`` on the ingest API: strawberry's ASGI view, with REST's error codes and limits.

- ``POST /graphql`` with a JSON body (``query``, ``variables``, ``operationName``), at most
  ``max_body_bytes`` like every REST body; queries are not served over GET (API.md names POST).
- ``GET /graphql`` from a browser serves GraphiQL only while the development login is on
  (``dev_login_enabled``); otherwise it answers 404.
- Every error carries ``extensions.code``: the REST code of the ``ScorecastError`` a resolver
  raised (with ``until`` for ``temporarily_blocked`` and ``retryAfterS`` plus a ``Retry-After``
  header for 429 codes), ``unavailable`` when Redis or MongoDB cannot be reached,
  ``query_too_deep`` / ``query_too_costly`` for the limits (``ingest.api.graph_limits``),
  ``bad_request`` for any other document or variable error, ``internal_error`` (message hidden,
  traceback logged) for a bug. Field errors answer 200, as GraphQL over HTTP does; a request
  that is not GraphQL at all (malformed JSON, no query, wrong content type) answers 400, a
  too large one 413, in the same ``{"errors": [...]}`` shape.
"""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from cross_web import HTTPException
from graphql import GraphQLError
from pymongo.errors import ConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.extensions import AddValidationRules, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.types import ExecutionContext, ExecutionResult

from contract.errors import ScorecastError, TemporarilyBlocked, TooManyRequests
from contract.http import HTTP_CODES, JSONResponse, read_body
from contract.settings import Settings
from ingest.api.graph import Context, Mutation, Query
from ingest.api.graph_limits import cost_limit, limit_code
from ingest.api.metrics import IngestMetrics

log = logging.getLogger("scorecast.graphql")
BACKEND_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionFailure)


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # strawberry logs every error with its traceback; a refused token or a bad argument is an
        # answer, not a fault. extensions_of logs the unexpected ones.
        return


def schema_of(settings: Settings) -> Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        extensions=[
            # Factories: an extension keeps per-execution state, so each execution gets its own.
            lambda: QueryDepthLimiter(max_depth=settings.graphql_max_depth),
            lambda: MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases),
            lambda: MaxTokensLimiter(max_token_count=settings.graphql_max_tokens),
            lambda: AddValidationRules([cost_limit(settings.graphql_max_cost)]),
        ],
    )


def extensions_of(error: GraphQLError, metrics: IngestMetrics) -> tuple[str, dict[str, Any]]:
    """(message, extensions) of ``error`` as answered; counts refusals like REST does."""
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):  # the document or its variables
        code = (error.extensions or {}).get("code") or limit_code(error.message) or "bad_request"
        return error.message, {"code": code}
    if isinstance(original, ScorecastError):
        metrics.count_refusal(original)
        extensions: dict[str, Any] = {"code": original.code}
        if isinstance(original, TemporarilyBlocked):
            extensions["until"] = original.until
        if isinstance(original, TooManyRequests):
            extensions["retryAfterS"] = max(1, original.retry_after_s)
        return original.message, extensions
    if isinstance(original, BACKEND_DOWN):
        log.warning("backing service unavailable on /graphql %s: %s", error.path, original)
        return "a backing service is unavailable; retry shortly", {"code": "unavailable"}
    log.error("unhandled error on /graphql %s", error.path, exc_info=original)
    return "internal error", {"code": "internal_error"}


def request_error(status: int, code: str, message: str) -> Response:
    """A request that never reached execution, in GraphQL's error shape."""
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status)


class GraphView(GraphQL[Context, None]):
    def __init__(self, settings: Settings) -> None:
        super().__init__(
            schema_of(settings),
            graphql_ide="graphiql" if settings.dev_login_enabled else None,
            allow_queries_via_get=False,
        )
        self.max_body_bytes = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (the route is HTTP only: no subscriptions over WebSocket)."""
        request = Request(scope, receive)
        try:
            body = await read_body(request, max_bytes=self.max_body_bytes)

            async def replay() -> Message:
                return {"type": "http.request", "body": body, "more_body": False}

            response = await self.run(Request(scope, replay))
        except ScorecastError as exc:  # the body's size
            response = request_error(exc.status, exc.code, exc.message)
        except HTTPException as exc:
            response = request_error(
                exc.status_code, HTTP_CODES.get(exc.status_code, "bad_request"), exc.reason
            )
        await response(scope, receive, send)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        assert isinstance(request, Request) and isinstance(response, Response)  # HTTP only
        return Context.of(request)

    def decode_json(self, data: str | bytes) -> object:
        try:
            found = super().decode_json(data)
        except ValueError as exc:  # not JSON, or not text (json.loads guesses UTF-16 and fails)
            raise HTTPException(400, f"the body is not JSON: {exc}") from None
        if not isinstance(found, dict | list):  # strawberry would call .get on it
            raise HTTPException(400, "the body must be a JSON object")
        return found

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        answer = process_result(result)
        if result.errors:
            metrics: IngestMetrics = request.app.state.metrics
            formatted = []
            for error in result.errors:
                message, extensions = extensions_of(error, metrics)
                formatted.append({**error.formatted, "message": message, "extensions": extensions})
            answer["errors"] = formatted  # type: ignore[typeddict-item]
        return answer

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, dict):
            errors: list[dict[str, Any]] = list(response_data.get("errors") or ())  # type: ignore[arg-type]
            waits = [e["extensions"].get("retryAfterS", 0) for e in errors]
            if any(waits):
                response.headers["Retry-After"] = str(max(waits))
        return response
