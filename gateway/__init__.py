"""The push tier: SSE and WebSocket connections, the broadcaster, the Pub/Sub listener, autosave.

protocol.py   I/O-free meaning of boards and connections (throttle, frames, lifecycle, outbox)
connection.py one client as the hub sees it: outbox, lifecycle, direct writes to its socket, expiry
hub.py        the registry of connections and boards; periods' roll-over, heartbeat, sweep, drain
broadcast.py  one loop per followed board: re-read on a change, ≤ once per interval, fanned out
listener.py   the one Pub/Sub subscription of the process (board and user channels), one Redis
sharded.py    on a Redis Cluster: one sharded subscription per master, resubscribed on failover
shards.py     I/O-free: which channel is followed on which master (slot table, placement plan)
sse.py        GET /api/v1/leaderboard/stream
ws.py         GET /api/v1/ws (boards, autosave pings, cross-device progress)
progress.py   the autosave writer (pipelined Redis, Pub/Sub to the user's other devices)
metrics.py    Prometheus metrics (the HPA scales on open connections)
fastpath/     every use of uvicorn's, websockets' and redis-py's internals, checked at start-up:
              sse.py (a stream's socket), websocket.py (/api/v1/ws from socket callbacks),
              roundtrip.py (hand-packed ping batches); without their shape, the portable paths
app.py        the Starlette app and its lifespan; __main__.py runs uvicorn with drain on shutdown
"""
