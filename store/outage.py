"""Waiting out an outage of Redis or MongoDB: probe cheaply, resume the moment the server answers.

A loop whose round failed because a backing service is unreachable does not sleep out a growing
back-off (which kept consumers, the Pub/Sub listener and the flusher idle for seconds after the
server was back). It probes every ``outage_probe_interval_s`` instead — one connection attempt and
one ``PING``, no retries — and carries on as soon as every probe answers. An outage is logged
twice (when it starts and when it ends), never with a traceback per probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import pymongo
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from store.clients import is_cluster

# One probe waits at most this long for its answer (a black-holed host must not stall the loop).
PROBE_TIMEOUT_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """A backing service and a cheap call that succeeds only when it answers."""

    name: str
    probe: Callable[[], Awaitable[object]]


def redis_service(redis: Any) -> Service:
    """Redis behind ``redis``'s pool, probed on a throwaway connection with retries off (the pool's
    own retry policy would turn one probe into several connection attempts with sleeps between).

    On a Redis Cluster every master is probed (the client's slot map names them): the service
    answers when all of them answer. A failed probe reloads the slot map, so a replica promoted
    meanwhile is what the next probe asks.
    """
    if is_cluster(redis):
        return Service("Redis", lambda: _probe_cluster(redis))
    pool = redis.connection_pool
    return Service("Redis", lambda: _probe(pool.connection_class, pool.connection_kwargs))


async def _probe(connection_class: Any, connection_kwargs: dict[str, Any]) -> None:
    await _ask(connection_class, connection_kwargs, "PING")


async def _ask(connection_class: Any, connection_kwargs: dict[str, Any], *command: str) -> Any:
    """``command``'s answer on a connection of its own, opened for it (no retries, a short
    timeout) and closed after."""
    options = {
        **connection_kwargs,
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": PROBE_TIMEOUT_S,
        "socket_timeout": PROBE_TIMEOUT_S,
    }
    conn = connection_class(**options)
    try:
        await conn.connect()
        await conn.send_command(*command)
        return await conn.read_response()
    finally:
        await conn.disconnect(nowait=True)


async def _master_probes(redis: Any) -> list[Coroutine[Any, Any, None]]:
    """One probe per master: of one Redis, or of every master in a cluster client's slot map."""
    if not is_cluster(redis):
        pool = redis.connection_pool
        return [_probe(pool.connection_class, pool.connection_kwargs)]
    if not redis.get_primaries():
        await redis.initialize()  # the client finds the nodes at its first command
    return [_probe(node.connection_class, node.connection_kwargs) for node in redis.get_primaries()]


async def _probe_cluster(redis: Any) -> None:
    try:
        await asyncio.gather(*await _master_probes(redis))
    except Exception:
        with contextlib.suppress(Exception):
            await redis.nodes_manager.initialize()
        raise


async def masters_answering(redis: Any) -> tuple[int, int]:
    """(how many masters answer a probe, how many there are): one Redis is one master. On a Redis
    Cluster a process still serves the slots of the masters that answer, so readiness asks for
    one, not all (with one master down, every pod out of its Service would be a full outage)."""
    answers = await asyncio.gather(*await _master_probes(redis), return_exceptions=True)
    return sum(not isinstance(a, BaseException) for a in answers), len(answers)


async def _probe_serving(connection_class: Any, connection_kwargs: dict[str, Any]) -> None:
    """Like :func:`_probe`, but the cluster node must also serve its slots: a master that was
    just started again answers PING while it still says ``cluster_state:fail`` (and CLUSTERDOWN
    to every keyed command) until the others took it back."""
    info = await _ask(connection_class, connection_kwargs, "CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_state:ok" not in text:
        raise ConnectionError("the node does not serve its slots (cluster_state is not ok)")


async def unreachable_masters(redis: Any) -> frozenset[str]:
    """The names (``host:port``) of the masters of a Redis Cluster that do not serve their slots
    now (no answer, or not ``cluster_state:ok``), all probed at once; empty on one Redis, which is
    not asked (a Redis that does not answer fails whatever uses it). A master that fails its probe
    makes the client reload its slot map."""
    if not is_cluster(redis):
        return frozenset()
    if not redis.get_primaries():
        await redis.initialize()
    primaries = list(redis.get_primaries())
    answers = await asyncio.gather(
        *(_probe_serving(node.connection_class, node.connection_kwargs) for node in primaries),
        return_exceptions=True,
    )
    down = frozenset(
        node.name
        for node, answer in zip(primaries, answers, strict=True)
        if isinstance(answer, BaseException)
    )
    if down:
        with contextlib.suppress(Exception):
            await redis.nodes_manager.initialize()
    return down


def mongo_service(client: Any) -> Service:
    """MongoDB behind the pymongo ``client``: a ``ping`` under a short deadline (server selection
    included), which also makes the client's monitor look at the server again at once."""

    async def probe() -> None:
        with pymongo.timeout(PROBE_TIMEOUT_S):
            await client.admin.command("ping")

    return Service("MongoDB", probe)


async def first_unreachable(services: Sequence[Service]) -> tuple[Service, BaseException] | None:
    """The first service that does not answer its probe, with the error; None when all answer."""
    for service in services:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
                await service.probe()
        except Exception as exc:
            return service, exc
    return None


async def wait_until_reachable(
    services: Sequence[Service],
    *,
    interval_s: float,
    stop: asyncio.Event,
    who: str,
    log: logging.Logger,
    down: tuple[Service, BaseException] | None = None,
) -> bool:
    """Return once every service answers (True), or when ``stop`` is set first (False).

    ``down`` is an already observed failing probe (saves one probe). Probes every ``interval_s``.
    """
    if down is None:
        down = await first_unreachable(services)
    if down is None:
        return True
    started = time.monotonic()
    log.warning(
        "%s: %s unreachable (%s); probing every %.2f s", who, down[0].name, _reason(down[1]), interval_s
    )
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            break
        if await first_unreachable(services) is None:
            log.warning("%s: %s answers again after %.1f s", who, down[0].name, time.monotonic() - started)
            return True
    return False


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
