"""The JSON error shape of API.md for Starlette apps, and bounded body decoding.

``{"error": {"code": "<snake_case>", "message": "<human text>"}}`` with a fitting status, for
every error: Scorecast's own, Starlette's HTTP errors (404, 405), Redis or MongoDB being
unreachable or a Redis Cluster slot without its master (503 ``unavailable``) and anything
unexpected (500).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from pymongo.errors import ConnectionFailure
from redis.exceptions import ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from contract.errors import BadRequest, PayloadTooLarge, ScorecastError, TemporarilyBlocked, TooManyRequests
from contract.wire import json_encoder

log = logging.getLogger("scorecast.http")
T = TypeVar("T")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class JSONResponse(Response):
    """A JSON response encoded by msgspec (Structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_encoder.encode(content)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> Response:
    """API.md's error body; ``extra`` fields (e.g. ``until``) go beside code and message."""
    error = {"code": code, "message": message, **(extra or {})}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _scorecast_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ScorecastError)
    headers = None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(max(1, exc.retry_after_s))}
    extra = {"until": exc.until} if isinstance(exc, TemporarilyBlocked) else None
    return error_response(exc.status, exc.code, exc.message, headers, extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _backend_down(request: Request, exc: Exception) -> Response:
    log.warning("backing service unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503, "unavailable", "a backing service is unavailable; retry shortly", {"Retry-After": "1"}
    )


def leaked_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py 8.1 failing to write to a connection the server closed.

    redis-py#4287: such a write raises the transport's own error (RuntimeError "handler is closed"
    under uvloop, TypeError/AttributeError under asyncio) instead of ConnectionError, past every
    retry. A Redis Cluster master that restarted leaves such connections in every pool. It is an
    unreachable Redis all the same: 503, not 500.
    """
    if not isinstance(exc, RuntimeError | TypeError | AttributeError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if (
            code.co_name == "send_packed_command"
            and tb.tb_frame.f_globals.get("__name__") == "redis.asyncio.connection"
        ):
            return True
        tb = tb.tb_next
    return False


async def _unexpected(request: Request, exc: Exception) -> Response:
    if leaked_connection_error(exc):
        return await _backend_down(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error")


_HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]] = [
    (ScorecastError, _scorecast_error),
    (HTTPException, _http_error),
    # Redis or MongoDB unreachable: nothing was accepted, the client may retry.
    (RedisConnectionError, _backend_down),
    (RedisTimeoutError, _backend_down),
    (ConnectionFailure, _backend_down),
    # A Redis Cluster without a master for a slot (CLUSTERDOWN while a restarted master rejoins,
    # a slot no node covers, TRYAGAIN during a resharding): the same, for the keys of that slot.
    (ClusterError, _backend_down),
    (SlotNotCoveredError, _backend_down),
    (TryAgainError, _backend_down),
    (Exception, _unexpected),
]


def install_error_handlers(app: Starlette) -> None:
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)


async def error_for(request: Request, exc: Exception) -> Response:
    """The response the installed handlers give ``exc``, for an endpoint served outside Starlette."""
    handler = next(handler for kind, handler in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)


def path_param(request: Request, name: str, type_: Any) -> Any:
    """The path parameter ``name`` checked against ``type_`` (an annotated msgspec type).

    Raises BadRequest (``bad_id``).
    """
    return checked_id(name, request.path_params[name], type_)


def checked_id(name: str, value: Any, type_: Any) -> Any:
    """``value`` (an id named ``name``, from a path or a GraphQL argument) checked against
    ``type_`` (an annotated msgspec type). Raises BadRequest (``bad_id``)."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{name}: {exc}", code="bad_id") from None


async def decode_body(request: Request, type_: type[T], *, max_bytes: int) -> T:
    """Read at most ``max_bytes`` of JSON body and decode it as ``type_``.

    Raises PayloadTooLarge (413) or BadRequest (``invalid_json``, ``invalid_body``).
    """
    body = await read_body(request, max_bytes=max_bytes)
    if not body:
        raise BadRequest("a JSON body is required", code="invalid_json")
    try:
        return msgspec.json.decode(bytes(body), type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc), code="invalid_body") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from None


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The whole body of ``request``, read no further than ``max_bytes``.

    Raises PayloadTooLarge (413) for a longer body, declared or not.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body larger than {max_bytes} bytes")
    return bytes(body)
