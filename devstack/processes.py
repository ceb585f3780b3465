"""Scorecast processes on free ports (tests and benchmarks): each started for real, stopped after."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from contract.settings import Settings
from devstack.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        env[field.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """One Scorecast process (``python -m <module>``) with its log file."""

    def __init__(self, module: str, settings: Settings, log_dir: Path, port: int | None = None) -> None:
        self.module = module
        self.settings = settings
        self.port = port
        self.log_path = log_dir / f"{module.replace('.', '_')}-{port or os.getpid()}-{time.time_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout_s: float = 20.0) -> Proc:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=settings_env(self.settings),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if self.port is not None:
            self._wait_port(timeout_s)
        return self

    def _wait_port(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.module} did not listen on {self.port}:\n{self.log()}")

    @property
    def url(self) -> str:
        """The HTTP base URL of a process that listens (the API, a gateway)."""
        assert self.port is not None, f"{self.module} does not listen"
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if not self.process:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


class Stack:
    """The Scorecast processes of one test. Start what the test needs; ``close`` stops all."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        ingest_port, gateway_port = free_port(), free_port()
        self.settings = settings.replace(
            ingest_port=ingest_port,
            gateway_port=gateway_port,
            public_ingest_url=f"http://127.0.0.1:{ingest_port}",
            cors_origins=f"http://127.0.0.1:{gateway_port},http://localhost:{gateway_port}",
        )
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    def start(self, module: str, **overrides: object) -> Proc:
        settings = self.settings.replace(**overrides) if overrides else self.settings
        port = {
            "ingest.api": settings.ingest_port,
            "gateway": settings.gateway_port,
            # With an operations port, started means listening there.
            "ingest.worker": settings.worker_metrics_port or None,
            "ingest.flusher": settings.flusher_metrics_port or None,
        }.get(module)
        proc = Proc(module, settings, self.log_dir, port).start()
        self.procs.append(proc)
        return proc

    def start_gateway(self, **overrides: object) -> Proc:
        """One more gateway, on a free port of its own, beside the one ``start("gateway")`` puts on
        ``gateway_url``: every gateway shares the stack's Redis and MongoDB."""
        return self.start("gateway", gateway_port=free_port(), **overrides)

    def start_all(self) -> Stack:
        for module in ("ingest.api", "ingest.worker", "gateway"):
            self.start(module)
        return self

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
