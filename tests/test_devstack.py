"""`make run`'s launcher: embedded servers + every process come up, answer, and stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pymongo import MongoClient

from contract import keys
from devstack.servers import free_port, redis_binary
from tests.stack import ROOT


def _wait_ok(url: str, deadline: float) -> httpx.Response:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200: {last}")


@dataclasses.dataclass
class Devstack:
    """A running ``python -m devstack`` (what ``make run`` runs); ``code`` and ``output`` once stopped."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    ingest_port: int
    gateway_port: int
    code: int | None = None
    output: str = ""

    def printed(self, deadline: float) -> str:
        """Its output once the API answers and it printed its URLs."""
        _wait_ok(f"http://127.0.0.1:{self.ingest_port}/healthz", deadline)
        while "Ctrl-C stops everything" not in self.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.log_path.read_text()


@contextlib.contextmanager
def devstack(tmp_path: Path, *, stop_timeout_s: float = 60, **env_vars: str) -> Iterator[Devstack]:
    """``python -m devstack`` on free ports with its data under ``tmp_path`` (``env_vars`` added
    to or overriding its environment), stopped with Ctrl-C (SIGINT) at the end."""
    ingest_port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URL", "JWT_SECRET")}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        INGEST_PORT=str(ingest_port),
        GATEWAY_PORT=str(gateway_port),
        EMBEDDED_REDIS_PORT=str(free_port()),
        EMBEDDED_MONGO_PORT=str(free_port()),
    )
    env.update(env_vars)
    log_path = tmp_path / "devstack.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "devstack"], cwd=ROOT, env=env, stdout=log, stderr=log)
    running = Devstack(proc, log_path, ingest_port, gateway_port)
    try:
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        running.code = proc.wait(timeout=stop_timeout_s)
        running.output = log_path.read_text()


def test_redis_binary_is_found() -> None:
    assert Path(redis_binary()).exists()


def test_make_run_starts_whole_stack_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with devstack(tmp_path) as stack:
        ingest_port, gateway_port = stack.ingest_port, stack.gateway_port
        deadline = time.monotonic() + 60
        _wait_ok(f"http://127.0.0.1:{ingest_port}/healthz", deadline)
        _wait_ok(f"http://127.0.0.1:{gateway_port}/healthz", deadline)
        page = _wait_ok(f"http://127.0.0.1:{gateway_port}/", deadline)
        assert "<html" in page.text.lower()
        login = httpx.post(
            f"http://127.0.0.1:{ingest_port}/api/v1/auth/login",
            json={"userId": "ada", "name": "Ada"},
            timeout=5.0,
        )
        assert login.status_code == 200, login.text
        assert login.json()["accessToken"]
        assert (tmp_path / "data" / "jwt_secret").exists()
        player = _wait_ok(f"http://127.0.0.1:{gateway_port}/player.html", deadline)
        assert "<video" in player.text
        course = _wait_ok(f"http://127.0.0.1:{ingest_port}/api/v1/courses/demo", deadline)
        assert course.json()["lectureCount"] == 3
    assert stack.code == 0, stack.output
    assert "Scorecast is running" in stack.output


def test_make_run_with_two_gateways_and_two_workers(tmp_path: Path) -> None:
    """``make run GATEWAYS=2 WORKERS=2``: both gateways serve on the one Redis, two workers
    consume the score stream together, every gateway URL is printed, Ctrl-C stops all of it."""
    redis_port = free_port()
    with devstack(tmp_path, EMBEDDED_REDIS_PORT=str(redis_port), GATEWAYS="2", WORKERS="2") as stack:
        deadline = time.monotonic() + 60
        output = stack.printed(deadline)
        urls = re.findall(r"leaderboard page\s+(http://127\.0\.0\.1:\d+)/", output)
        assert len(urls) == 2 and len(set(urls)) == 2, output
        for url in urls:
            assert "<html" in _wait_ok(f"{url}/", deadline).text.lower()
        client = redis.Redis(port=redis_port, decode_responses=True)
        try:

            def consumers() -> int:
                try:
                    groups = client.xinfo_groups(keys.SCORE_STREAM)
                except redis.ResponseError:  # no worker has created the stream yet
                    return 0
                return sum(int(g["consumers"]) for g in groups if g["name"] == keys.WORKER_GROUP)

            while consumers() < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert consumers() == 2
        finally:
            client.close()
    assert stack.code == 0, stack.output


def _mongo_pid(pid_file: Path, other_than: int | None, deadline: float, log: Path) -> int:
    """The pid nx-27017 wrote into its pid file, once it is not ``other_than``."""
    while True:
        try:
            pid = int(pid_file.read_text().strip())
            if pid != other_than:
                return pid
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, f"no new pid in {pid_file}; make run said:\n{log.read_text()}"
        time.sleep(0.1)


def test_make_run_brings_back_a_killed_embedded_mongodb(tmp_path: Path) -> None:
    mongo_port = free_port()
    pid_file = tmp_path / "data" / "mongo" / "nx-27017.pid"
    with devstack(tmp_path, EMBEDDED_MONGO_PORT=str(mongo_port)) as stack:
        deadline = time.monotonic() + 90
        _wait_ok(f"http://127.0.0.1:{stack.ingest_port}/healthz", deadline)
        with MongoClient(f"mongodb://127.0.0.1:{mongo_port}", serverSelectionTimeoutMS=60_000) as client:
            client["keep"]["docs"].insert_one({"_id": "before-the-crash", "n": 1})
            first = _mongo_pid(pid_file, None, deadline, stack.log_path)
            os.kill(first, signal.SIGKILL)
            # Started again, not refused (a deadline of its own: the machine may be busy).
            second = _mongo_pid(pid_file, first, time.monotonic() + 90, stack.log_path)
            assert stack.proc.poll() is None
            found = client["keep"]["docs"].find_one({"_id": "before-the-crash"})
        assert found == {"_id": "before-the-crash", "n": 1}
        assert second != first
    assert stack.code == 0, stack.output
    assert "mongo server exited with -9; restarting" in stack.output, stack.output


def test_make_run_cluster_starts_three_masters_two_gateways_and_stops_all_on_ctrl_c(tmp_path: Path) -> None:
    """``make run-cluster``: a 3-master Redis Cluster, both gateways ready on it, every URL printed;
    a login writes through the cluster; Ctrl-C stops every process and every master."""
    with devstack(tmp_path, stop_timeout_s=90, REDIS_CLUSTER="1", GATEWAYS="2", WORKERS="2") as stack:
        deadline = time.monotonic() + 90
        output = stack.printed(deadline)
        urls = re.findall(r"leaderboard page\s+(http://127\.0\.0\.1:\d+)/", output)
        assert len(set(urls)) == 2, output
        masters = re.findall(r"redis://127\.0\.0\.1:(\d+)", output.split("Redis Cluster masters", 1)[1])
        assert len(set(masters)) == 3, output
        for url in urls:
            assert _wait_ok(f"{url}/readyz", deadline).json()["status"] == "ready"
        login = httpx.post(
            f"http://127.0.0.1:{stack.ingest_port}/api/v1/auth/login",
            json={"userId": "ada", "name": "Ada"},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        for port in masters:
            info = redis.Redis(port=int(port), decode_responses=True)
            try:
                assert info.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
            finally:
                info.close()
    assert stack.code == 0, stack.output
    for port in masters:
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=int(port), socket_connect_timeout=1).ping()
