"""Every use of a library's private internals in Scorecast, and the check of their shape.

Checked against uvicorn 0.54.0, websockets 17.4 and redis-py 8.1.0 (``pyproject.toml`` bounds
them above), and CPython 3.11's asyncio. Nothing outside this package touches them.
:func:`unavailable` looks at the shapes the package relies on, at start-up; where one is missing
(another version, another server) or with ``FAST_PATH=0`` the gateway logs why and serves
everything through the portable paths (ASGI for SSE and WebSocket, redis-py's ``Pipeline``).

- :class:`DirectSink` (SSE, :mod:`.sse`): uvicorn's httptools request cycle — the owner of the ASGI
  ``send`` bound method — holds the socket; broadcast frames are written to it without a
  coroutine switch, and the cycle's idle queues are slimmed (``slim``: ``asyncio.Event._waiters``,
  uvicorn's ``pipeline``).
- :class:`FastWebSocket` (WebSocket, :mod:`.websocket`): a uvicorn ``ws`` protocol class on
  websockets' Sans-I/O ``ServerProtocol``. For ``/api/v1/ws`` it runs the handshake and feeds
  ``gateway.ws.Session`` from its socket callbacks: no ASGI task, queue or write loop per
  connection, and every board tick written as the same pre-framed bytes to every socket. Any other
  path is handed to uvicorn's own ``websockets-sansio`` protocol. What it relies on: the
  constructor uvicorn's HTTP protocol calls on an upgrade, ``ServerState.connections``/
  ``default_headers``, and the frame parser of ``ServerProtocol``.
- :func:`redis_round_trip` (:mod:`.roundtrip`): a batch of packed commands written to the socket of a
  redis-py connection (on a Redis Cluster, one per master of their slots) that it takes over from
  the connection's asyncio streams, the replies parsed by a hiredis ``Reader`` in the socket's
  callback (the pool's ``get_connection``/``release``, a cluster node's ``acquire_connection``/
  ``release``, a connection's ``connect``, ``_writer`` (its transport), ``_parser.parse_error``,
  ``encoder`` and ``_close``).
"""

from __future__ import annotations

import asyncio
import collections
import inspect

from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from gateway.fastpath.roundtrip import redis_round_trip
from gateway.fastpath.sse import DirectSink
from gateway.fastpath.websocket import FastWebSocket

__all__ = ["CHECKED", "DirectSink", "FastWebSocket", "redis_round_trip", "unavailable"]
CHECKED = {"uvicorn": "0.54.0", "websockets": "17.4", "redis": "8.1.0"}


def unavailable() -> str | None:
    """Why the fast paths cannot be used with the installed libraries, or None when they can."""
    try:
        import redis.asyncio.connection as rc
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from uvicorn.protocols.http.flow_control import FlowControl
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from uvicorn.server import ServerState
    except ImportError as exc:
        return f"cannot import {exc.name}"
    upgrade = HttpToolsProtocol.handle_websocket_upgrade.__code__
    needs: list[tuple[str, bool]] = [
        (
            "uvicorn's upgrade constructs the ws protocol with config, server_state, app_state",
            ("config", "server_state", "app_state") in upgrade.co_consts,
        ),
        (
            "uvicorn's ServerState has connections and default_headers",
            all(hasattr(ServerState(), a) for a in ("connections", "default_headers")),
        ),
        (
            "uvicorn's httptools cycle keeps transport, flow, disconnected, response_complete",
            {"transport", "flow", "disconnected", "response_complete", "chunked_encoding"}
            <= set(RequestResponseCycle.__init__.__code__.co_names),
        ),
        (
            "asyncio.Event keeps its waiters in _waiters (append, remove, iteration); uvicorn's "
            "cycle its message_event and on_response, its protocol a pipeline (appendleft, pop)",
            isinstance(asyncio.Event()._waiters, collections.deque)
            and {"_waiters", "append", "remove"} <= set(asyncio.Event.wait.__code__.co_names)
            and {"message_event", "on_response"} <= set(RequestResponseCycle.__init__.__code__.co_names)
            and "pipeline" in HttpToolsProtocol.__init__.__code__.co_names
            and "appendleft" in HttpToolsProtocol.on_headers_complete.__code__.co_names
            and "pop" in HttpToolsProtocol.on_response_complete.__code__.co_names
            and "_is_writable_event" in FlowControl.__init__.__code__.co_names,
        ),
        ("uvicorn has its websockets-sansio protocol", hasattr(WebSocketsSansIOProtocol, "data_received")),
        (
            "websockets' ServerProtocol is Sans-I/O, its frame parser a generator in .parser",
            all(
                hasattr(ServerProtocol, a)
                for a in ("receive_data", "events_received", "data_to_send", "accept", "send_close", "fail")
            )
            and inspect.isgeneratorfunction(Protocol.parse)
            and {"parser", "reader"} <= set(Protocol.__init__.__code__.co_names)
            and hasattr(StreamReader(), "buffer"),
        ),
        (
            "redis-py connections connect through asyncio streams (_writer), parse errors in "
            "_parser, close with _close; pools lend and take back connections",
            all(hasattr(rc.Connection, a) for a in ("connect", "_close", "_connect"))
            and {"_writer", "_reader"} <= set(rc.Connection._close.__code__.co_names)
            and {"_writer", "_reader", "open_connection"} <= set(rc.Connection._connect.__code__.co_names)
            and hasattr(rc.Connection().encoder, "decode_responses")
            and callable(getattr(rc.Connection()._parser, "parse_error", None))
            and all(hasattr(rc.ConnectionPool, a) for a in ("get_connection", "release")),
        ),
        (
            "redis-py's cluster client maps a key to its node, a node lends connections",
            hasattr(RedisCluster, "get_node_from_key")
            and all(hasattr(ClusterNode, a) for a in ("acquire_connection", "release")),
        ),
    ]
    missing = [what for what, ok in needs if not ok]
    return "; ".join(missing) or None
