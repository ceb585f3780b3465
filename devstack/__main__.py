"""``make run``: the whole stack on one machine.

Starts the embedded servers (unless ``REDIS_URL`` / ``MONGO_URL`` are set), then the ingest
API, the worker, the flusher and the gateway as child processes; restarts a child or an embedded
server that dies (reaped, its stale pid file removed, started again on the same port and data);
Ctrl-C (or SIGTERM) stops everything in order: gateways first (they drain), servers last.
``GATEWAYS=n`` / ``WORKERS=n`` (``make run GATEWAYS=2 WORKERS=2``) start n of each: the gateways on
consecutive free ports from ``GATEWAY_PORT``, every one on the same Redis and MongoDB.
``REDIS_CLUSTER=1`` without ``REDIS_URL`` (``make run-cluster``) starts a 3-master Redis Cluster
instead of one Redis (``devstack.cluster``, data in ``.data/cluster``); its masters are restarted
like any embedded server, with their slots and data.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack import demo
from devstack.cluster import RedisCluster, cluster_ports
from devstack.servers import ManagedServer, ServerError, free_port, mongo_server, redis_server

ROOT = Path(__file__).resolve().parent.parent


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _jwt_secret(data_dir: Path) -> str:
    path = data_dir / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


class Child:
    def __init__(self, name: str, module: str, env: dict[str, str]) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", module]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT)

    def stop(self, timeout_s: float) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _cluster(data_dir: Path) -> RedisCluster:
    """The local cluster under ``data_dir``, on the ports it was formed on (a cluster remembers its
    nodes by address, so a restart must use the same ports), chosen free the first time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    saved = data_dir / "ports"
    if saved.exists():
        ports = [int(p) for p in saved.read_text().split()]
    else:
        ports = cluster_ports()
        saved.write_text(" ".join(map(str, ports)))
    return RedisCluster(ports, data_dir)


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _count(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise ValueError(f"{name} must be a whole number from 1 to 16, not {raw!r}")
    return int(raw)


def main() -> int:
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    servers: list[ManagedServer] = []
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children: list[Child] = []
    cluster: RedisCluster | None = None
    try:
        gateways, workers = _count(env, "GATEWAYS"), _count(env, "WORKERS")
    except ValueError as exc:
        print(f"[devstack] {exc}", file=sys.stderr)
        return 2
    try:
        if not env.get("REDIS_URL") and _flag(env, "REDIS_CLUSTER"):
            cluster = _cluster(data_dir / "cluster").start(timeout_s=60.0)
            print(f"[devstack] Redis Cluster of 3 masters on {cluster.ports}", flush=True)
            servers += cluster.nodes
            env["REDIS_URL"] = cluster.url
        elif not env.get("REDIS_URL"):
            port = _port(int(env.get("EMBEDDED_REDIS_PORT", "6379")))
            servers.append(redis_server(port, data_dir / "redis").start())
            env["REDIS_URL"] = servers[-1].url
        if not env.get("MONGO_URL"):
            port = _port(int(env.get("EMBEDDED_MONGO_PORT", "27017")))
            servers.append(mongo_server(port, data_dir / "mongo").start())
            env["MONGO_URL"] = servers[-1].url
        env.setdefault("JWT_SECRET", _jwt_secret(data_dir))
        env.setdefault("DEV_LOGIN_ENABLED", "1")
        env.setdefault("STATIC_DIR", str(ROOT / "static"))
        env.setdefault("PYTHONUNBUFFERED", "1")
        ingest_port = env.setdefault("INGEST_PORT", "8000")
        gateway_ports = [env.setdefault("GATEWAY_PORT", "8001")]
        while len(gateway_ports) < gateways:
            candidate = str(_port(int(gateway_ports[-1]) + 1))
            if candidate not in (ingest_port, *gateway_ports):
                gateway_ports.append(candidate)
        env.setdefault("PUBLIC_INGEST_URL", f"http://127.0.0.1:{ingest_port}")
        env.setdefault(
            "CORS_ORIGINS",
            ",".join(
                f"http://{host}:{listen}" for listen in gateway_ports for host in ("127.0.0.1", "localhost")
            ),
        )

        children = [Child("ingest-api", "ingest.api", env)]
        for i in range(workers):
            name = "ingest-worker" if workers == 1 else f"ingest-worker-{i + 1}"
            worker_env = dict(env)
            if workers > 1 and env.get("CONSUMER_NAME"):  # one consumer of the group each
                worker_env["CONSUMER_NAME"] = f"{env['CONSUMER_NAME']}-{i + 1}"
            children.append(Child(name, "ingest.worker", worker_env))
        children.append(Child("ingest-flusher", "ingest.flusher", env))
        for i, listen in enumerate(gateway_ports):
            name = f"gateway-{i + 1}" if gateways > 1 else "gateway"
            children.append(Child(name, "gateway", {**env, "GATEWAY_PORT": listen}))
        for child in children:
            child.start()
        print(f"[devstack] {demo.seed(env)}", flush=True)
        lines = ["", "Scorecast is running:"]
        for i, listen in enumerate(gateway_ports):
            label = f"gateway {i + 1}: " if gateways > 1 else ""
            lines += [
                f"  {label}leaderboard page  http://127.0.0.1:{listen}/",
                f"  {label}video player      http://127.0.0.1:{listen}/player.html",
                f"  {label}metrics           http://127.0.0.1:{listen}/metrics",
            ]
        lines += [
            f"  ingest API        http://127.0.0.1:{ingest_port}/api/v1",
            f"  workers           {workers}",
            f"  Redis {env['REDIS_URL']}   MongoDB {env['MONGO_URL']}",
            *([f"  Redis Cluster masters  {'  '.join(n.url for n in cluster.nodes)}"] if cluster else []),
            "Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), flush=True)
        server_restarts = dict.fromkeys(servers, 0)
        while not stopping:
            time.sleep(0.2)
            for server in servers:
                code = server.exited()
                if code is not None and not stopping:
                    server_restarts[server] += 1
                    print(f"[devstack] {server.name} server exited with {code}; restarting", flush=True)
                    time.sleep(min(5.0, 0.5 * server_restarts[server]))
                    try:
                        server.start(timeout_s=60.0)  # a busy machine: do not kill a slow start
                    except ServerError as exc:  # tried again on the next round
                        print(f"[devstack] {exc}", file=sys.stderr, flush=True)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None and not stopping:
                    child.restarts += 1
                    print(f"[devstack] {child.name} exited with {code}; restarting", flush=True)
                    time.sleep(min(5.0, 0.5 * child.restarts))
                    child.start()
    except ServerError as exc:
        print(f"[devstack] {exc}", file=sys.stderr)
        return 1
    finally:
        print("[devstack] stopping", flush=True)
        # Gateways first (they drain), then the flusher, the workers and the API.
        for child in reversed(children):
            child.stop(timeout_s=20.0)
        for server in reversed(servers):
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
