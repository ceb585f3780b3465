"""The load generator of the gateway benches: light SSE and WebSocket clients in worker processes.

One worker (``python -m bench.loadgen``, started by :class:`LoadGen`) holds thousands of
clients on one uvloop loop and takes commands as JSON lines on stdin, answering each with one
JSON line on stdout. Clients are bare ``asyncio.Protocol`` objects: an SSE client scans for
``id:`` lines; a WebSocket client is the ``websockets`` Sans-I/O ``ClientProtocol`` (masking,
pongs, close) with the few server messages it needs recognised by their first bytes, not parsed
as JSON: the generator must not be what a bench measures. Times are ``time.monotonic()``
(CLOCK_MONOTONIC, the same clock in every process of the machine).

Commands (``op``): ``connect`` clients (board subscribers, or players that do not subscribe),
``wait`` until every client has a board version, ``pings_open`` (each player one ping in flight,
sent on its own schedule whether or not the gateway keeps up), ``pings_window`` (closed loop,
``window`` pings in flight), ``close`` every client, ``exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from bench.common import SOURCE_ADDRESSES, last_sse_id, raise_nofile_limit

SUBSCRIBE = b'{"type":"subscribe","board":"global"}'
PING = b'{"type":"progress","courseId":"bench","lectureId":"l1","position":%d,"seq":%d}'


class Worker:
    """Every client of this process and what a command waits for."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.target = 0  # the board version ``wait`` waits for
        self.remaining = 0  # clients still to reach the target / to get in
        self.enough = 0  # ``done`` is set when no more than this many remain
        self.done = asyncio.Event()
        self.retries = 0  # subscribes sent again after an ``unavailable`` answer
        self.latencies: list[float] = []
        self.errors = 0
        self.error_sample: list[str] = []
        self.window = 0  # > 0: closed loop, the next ping as soon as an ack came

    def count_down(self) -> None:
        self.remaining -= 1
        if self.remaining <= self.enough:
            self.done.set()

    async def until(self, remaining: int, deadline: float) -> None:
        """Until no more than ``remaining`` clients are still counted (or ``deadline``)."""
        self.enough = remaining
        if self.remaining > remaining:
            self.done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), max(0.0, deadline - time.monotonic()))


class Client(asyncio.Protocol):
    """What both transports note: the board versions seen (first arrival of each), whether the
    client got in (snapshot, or open when it does not subscribe), its ping in flight."""

    def __init__(self, worker: Worker, subscribe: bool) -> None:
        self.worker = worker
        self.subscribe = subscribe
        self.transport: asyncio.Transport | None = None
        self.version = -1
        self.seen: dict[int, float] = {}
        self.in_at = 0.0  # when it got in
        self.ended = False  # got in, failed or lost: counted down for ``connect``
        self.closed = False
        self.index = 0  # over every worker's clients: source address, ping phase
        self.seq = 0
        self.in_flight: dict[int, float] = {}  # seq -> time the ping counts from
        self.owed = 0.0  # a scheduled ping waiting for the one in flight (its schedule time)

    def got_in(self, now: float) -> None:
        if not self.ended:
            self.ended = True
            self.in_at = now
            self.worker.count_down()

    def on_version(self, version: int, now: float) -> None:
        if version <= self.version:
            return
        old, self.version = self.version, version
        self.seen[version] = now
        self.got_in(now)
        if old < self.worker.target <= version:
            self.worker.count_down()

    def on_ack(self, seq: int, now: float) -> None:
        since = self.in_flight.pop(seq, None)
        if since is not None:
            self.worker.latencies.append(now - since)
        if self.worker.window:
            self.send_ping(now)
        elif self.owed:
            owed, self.owed = self.owed, 0.0
            self.send_ping(owed)

    def on_error(self, text: bytes) -> None:
        self.worker.errors += 1
        if len(self.worker.error_sample) < 5:
            self.worker.error_sample.append(text[:200].decode(errors="replace"))

    def send_ping(self, since: float) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ended:
            self.ended = True
            self.worker.count_down()  # never got in
        elif self.version < self.worker.target:
            self.worker.count_down()  # will never reach it

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class SseClient(Client):
    def __init__(self, worker: Worker, port: int, token: str) -> None:
        super().__init__(worker, subscribe=True)
        self.request = (
            f"GET /api/v1/leaderboard/stream?board=global HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        self.request = b""

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        version, self.tail = last_sse_id(self.tail, data)
        if version is not None:
            self.on_version(version, now)


class WsClient(Client):
    def __init__(self, worker: Worker, port: int, token: str, subscribe: bool) -> None:
        super().__init__(worker, subscribe)
        self.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/api/v1/ws?access_token={token}"), max_size=None
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.on_text(bytes(event.data), now)
            elif protocol.handshake_exc is not None:
                self.on_error(str(protocol.handshake_exc).encode())
            elif self.subscribe:
                protocol.send_text(SUBSCRIBE)
            else:
                self.got_in(now)
        self.flush()

    def on_text(self, text: bytes, now: float) -> None:
        if text.startswith(b'{"type":"ack"'):
            self.on_ack(int(text[text.index(b'"seq":') + 6 : -1]), now)
        elif text.startswith(b'{"type":"leaderboard"'):
            at = text.index(b'"version":') + 10
            self.on_version(int(text[at : text.index(b",", at)]), now)
        elif text.startswith(b'{"type":"error"'):
            self.on_error(text)
            if self.subscribe and not self.ended and b'"code":"unavailable"' in text:
                # As a page does: the board could not be read in time, ask again in a second.
                self.worker.retries += 1
                asyncio.get_running_loop().call_later(1.0, self.resubscribe)
            at = text.find(b'"seq":')
            if at >= 0:  # a refused ping: answered all the same
                self.on_ack(int(text[at + 6 : text.index(b"}", at)]), now)

    def resubscribe(self) -> None:
        if not self.closed:
            self.protocol.send_text(SUBSCRIBE)
            self.flush()

    def send_ping(self, since: float) -> None:
        if self.closed:
            return
        self.seq += 1
        self.in_flight[self.seq] = since
        self.protocol.send_text(PING % (self.seq % 70_000, self.seq))
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # the protocol's end of stream
                self.transport.close()


# ---------------------------------------------------------------- commands
async def connect(worker: Worker, cmd: dict[str, Any]) -> dict[str, Any]:
    """Open ``tokens`` clients (``batch`` at a time, 0: all at once); answer when every one got in
    or failed, or at ``timeout_s``."""
    loop = asyncio.get_running_loop()
    port, tokens, transport = cmd["port"], cmd["tokens"], cmd["transport"]
    subscribe = cmd.get("subscribe", True)
    started = time.monotonic()
    new: list[Client] = [
        SseClient(worker, port, t) if transport == "sse" else WsClient(worker, port, t, subscribe)
        for t in tokens
    ]
    for i, client in enumerate(new):
        client.index = cmd["index0"] + i * cmd["stride"]
    worker.clients.extend(new)
    worker.target = -(2**62)  # no ``wait`` in progress
    worker.remaining = len(new)
    failures = 0

    async def open_one(client: Client) -> None:
        nonlocal failures
        source = SOURCE_ADDRESSES[client.index % len(SOURCE_ADDRESSES)]
        try:
            await loop.create_connection(lambda: client, "127.0.0.1", port, local_addr=(source, 0))
        except OSError as exc:
            failures += 1
            client.on_error(repr(exc).encode())
            client.connection_lost(exc)

    # ``batch`` at a time, each batch in (or failed) before the next; 0: all at once.
    batch = cmd.get("batch") or len(new)
    deadline = started + cmd["timeout_s"]
    for start in range(0, len(new), batch):
        await asyncio.gather(*(open_one(c) for c in new[start : start + batch]))
        await worker.until(max(0, len(new) - start - batch), deadline)
    got_in = [c.in_at for c in new if c.in_at]
    return {
        "started": started,
        "in": len(got_in),
        "never": len(new) - len(got_in),
        "connect_failures": failures,
        "in_times": got_in,
        "version": max((c.version for c in new), default=-1),
        "errors": worker.errors,
        "error_sample": worker.error_sample,
        "retries": worker.retries,
    }


async def wait(worker: Worker, cmd: dict[str, Any]) -> dict[str, Any]:
    """Until every open client has a board version >= ``version``: each one's first arrival."""
    target = worker.target = cmd["version"]
    live = [c for c in worker.clients if not c.closed]
    worker.remaining = sum(1 for c in live if c.version < target)
    await worker.until(0, time.monotonic() + cmd["timeout_s"])
    arrivals = [min(t for v, t in c.seen.items() if v >= target) for c in live if c.version >= target]
    return {"arrivals": arrivals, "missing": len(live) - len(arrivals)}


async def pings_open(worker: Worker, cmd: dict[str, Any]) -> dict[str, Any]:
    """Each client pings every ``period_s`` from ``start`` plus its phase, for ``seconds``: open
    loop. A ping due while the last one is unanswered goes out when that ack comes, timed from
    when it was due (so a slow gateway shows in the latencies); a third one due meanwhile is
    skipped (counted). Answers the latencies of the pings due in the window."""
    worker.window = 0
    worker.latencies = []
    period, start, seconds = cmd["period_s"], cmd["start"], cmd["seconds"]
    clients = [c for c in worker.clients if c.in_at and not c.closed]
    schedule = sorted((start + c.index / cmd["total"] * period, i) for i, c in enumerate(clients))
    sent = skipped = 0
    late: list[float] = []  # how late the generator sent a ping due on schedule (its own lag)
    end = start + seconds
    rounds = 0
    while True:
        base = rounds * period
        if start + base >= end:
            break
        for due, i in schedule:
            due += base
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            client = clients[i]
            if client.in_flight:
                if client.owed:
                    skipped += 1
                else:
                    client.owed = due
                continue
            sent += 1
            late.append(time.monotonic() - due)
            client.send_ping(due)
        rounds += 1
    await answered(clients)
    return {
        "latencies": worker.latencies,
        "sent": sent,
        "skipped": skipped,
        "late": late,
        "unanswered": sum(len(c.in_flight) for c in clients),
        "errors": worker.errors,
        "error_sample": worker.error_sample,
    }


async def answered(clients: list[Client], timeout_s: float = 10.0) -> None:
    """Until no ping of ``clients`` is in flight or owed (at most ``timeout_s``)."""
    for _ in range(int(timeout_s * 100)):
        if not any(c.in_flight or c.owed for c in clients):
            return
        await asyncio.sleep(0.01)


async def pings_window(worker: Worker, cmd: dict[str, Any]) -> dict[str, Any]:
    """Closed loop: every client keeps ``window`` pings in flight for ``seconds``."""
    worker.latencies = []
    worker.window = cmd["window"]
    clients = [c for c in worker.clients if c.in_at and not c.closed]
    now = time.monotonic()
    for client in clients:
        for _ in range(worker.window):
            client.send_ping(now)
    await asyncio.sleep(max(0.0, cmd["start"] + cmd["seconds"] - time.monotonic()))
    worker.window = 0  # no more pings; wait for the ones in flight
    await answered(clients)
    return {"latencies": worker.latencies, "errors": worker.errors, "error_sample": worker.error_sample}


async def close(worker: Worker, cmd: dict[str, Any]) -> dict[str, Any]:
    for client in worker.clients:
        client.close()
    n = len(worker.clients)
    worker.clients = []
    worker.errors = worker.retries = 0
    worker.error_sample = []
    await asyncio.sleep(0.5)
    return {"closed": n}


COMMANDS = {"connect": connect, "wait": wait, "pings_open": pings_open, "pings_window": pings_window}
COMMANDS["close"] = close


async def serve() -> None:
    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        answer = await COMMANDS[cmd["op"]](worker, cmd)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for client in worker.clients:
        client.close()


# ---------------------------------------------------------------- the benches' side
class LoadGen:
    """``procs`` worker processes; :meth:`call` sends each its command and gathers the answers."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @classmethod
    async def start(cls, procs: int) -> LoadGen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return cls(
            [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=2**28,
                    env=env,
                )
                for _ in range(procs)
            ]
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def call(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One command per worker (in order), answered in the same order."""
        for proc, cmd in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"load generator {proc.pid} exited")
            answers.append(json.loads(line))
        return answers

    async def all(self, **cmd: Any) -> list[dict[str, Any]]:
        """The same command to every worker."""
        return await self.call([cmd] * len(self.procs))

    async def connect(
        self, transport: str, port: int, tokens: Sequence[str], **cmd: Any
    ) -> list[dict[str, Any]]:
        """``tokens`` clients (one each), shared out over the workers."""
        n = len(self.procs)
        return await self.call(
            [
                dict(
                    cmd,
                    op="connect",
                    transport=transport,
                    port=port,
                    tokens=list(tokens[k::n]),
                    index0=k,
                    stride=n,
                )
                for k in range(n)
            ]
        )

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b'{"op": "exit"}\n')
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
