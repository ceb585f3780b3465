"""Serve the gateway: ``python -m gateway``.

On SIGTERM (Kubernetes preStop, Ctrl-C) the server drains before uvicorn's own shutdown:
readiness fails, every SSE stream gets ``event: reconnect`` with a jittered delay and ends, every
WebSocket gets ``{type: "reconnect"}`` and close 1012; after ``drain_timeout_s`` stragglers are
cut. uvicorn then stops with ``timeout_graceful_shutdown`` as a backstop.
"""

from __future__ import annotations

import gc
import logging
import resource
import socket

import uvicorn
from starlette.applications import Starlette

from contract.logs import install_redaction, setup_logging, uvicorn_log_config
from contract.settings import Settings
from gateway.app import WS_PATH, create_app, fast_path
from gateway.fastpath import FastWebSocket
from gateway.sse import SlowClientError, serve
from gateway.state import GatewayState

# A young collection after this many more tracked objects than the last one left (CPython: 700).
GC_YOUNG_THRESHOLD = 50_000


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        st: GatewayState | None = getattr(self.app.state, "gateway", None)
        if st is not None:
            await st.hub.drain(self.drain_timeout_s)
        await super().shutdown(sockets)


class _HideSlowClients(logging.Filter):
    """A kicked slow client ends its stream with SlowClientError: expected, not an app error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SlowClientError))


def main() -> None:
    install_redaction()  # uvicorn logs a WebSocket handshake's query string: access_token=…
    settings = Settings.from_env()
    setup_logging(log_format=settings.log_format, level=settings.log_level)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one descriptor per connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = create_app(settings)
    config = uvicorn.Config(
        serve(app),
        interface="asgi3",  # serve() answers with an awaitable, uvicorn cannot tell from its type
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format),
        loop="uvloop",
        http="httptools",
        # The fast path's own protocol serves /api/v1/ws; any other path, or the portable path,
        # goes through uvicorn's own Sans-I/O protocol and ASGI.
        ws=FastWebSocket.serving(app, WS_PATH) if fast_path(settings, say=False) else "websockets-sansio",
        ws_max_size=64 * 1024,  # frames above the app's own limit get an error message, not a close
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=False,  # the fast path writes one frame's bytes to every socket
        access_log=False,
        # The gateway reads no client address or scheme; the middleware would hold a coroutine
        # frame in every stream's and WebSocket's task for hours (~0.3 KiB per connection).
        proxy_headers=False,
        backlog=4096,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_timeout_s),
    )
    logging.getLogger("uvicorn.error").addFilter(_HideSlowClients())
    tune_gc()
    DrainingServer(config, app, settings.drain_timeout_s).run()


def tune_gc() -> None:
    """The cyclic garbage collector, set for a process that holds many connections.

    A gateway keeps ~35 tracked objects per connection for hours (350,000 at 10,000 clients),
    while what an autosave ping or a broadcast allocates dies within a round trip and forms no
    cycle. At CPython's default, a young collection every 700 objects, the ones in flight were
    promoted on and on, and a full collection — of every connection's objects, 0.3 s at 10,000 —
    came every second or two under 10,000 pings/s: a third of the process's CPU, and its longest
    pauses (bench/RESULTS.md). A closed connection's cycles are still collected, later.
    """
    gc.freeze()  # what start-up made lives as long as the process: no collection looks at it again
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


if __name__ == "__main__":
    main()
