"""Every process of the Kubernetes manifests starts with the environment the manifests give it.

The ConfigMap's data and each container's ``env``/``envFrom`` are read from deploy/k8s/*.yaml;
what only a cluster provides is substituted: the Secret's files (a fresh RSA key pair, the public
key written where the manifest mounts it, under a temporary directory), the Services' addresses
(the test's Redis and MongoDB), a pod name for ``fieldRef``, and free ports for the listeners.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from contract.settings import Settings
from devstack.processes import ROOT
from devstack.servers import free_port

MANIFESTS = ROOT / "deploy" / "k8s"
LISTENS = {"ingest.api": "INGEST_PORT", "gateway": "GATEWAY_PORT"}


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def container_envs(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Per process module: (the container's environment, the container), as Kubernetes builds it."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    found: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        for container in pod["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update({k: str(v) for k, v in config_maps[source["configMapRef"]["name"]].items()})
            for var in container.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                else:
                    assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", var
                    env[var["name"]] = f"{deployment['metadata']['name']}-7d9f-x2k4"
            command = container["command"]
            assert command[:2] == ["python", "-m"], command
            found[command[2]] = (env, container)
    return found


def rsa_pair(tmp: Path) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> httpx.Response:
    while True:
        assert proc.poll() is None, f"{url}: the process exited:\n{log.read_text()}"
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200:\n{log.read_text()}"
        time.sleep(0.1)


def wait_for_line(text: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while text not in log.read_text():
        assert proc.poll() is None, f"exited before logging {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{log.read_text()}"
        time.sleep(0.1)


def test_every_manifest_process_starts_with_the_manifests_environment(
    settings: Settings, redis: Any, mongo: Any, tmp_path: Path
) -> None:
    docs = documents()
    envs = container_envs(docs)
    assert set(envs) == {"ingest.api", "ingest.worker", "ingest.flusher", "gateway"}
    assert not [d for d in docs if d["kind"] == "Secret"], "an example Secret would overwrite the real one"
    private, public = rsa_pair(tmp_path)
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    ports: dict[tuple[str, str | int], int] = {}
    try:
        for module, (manifest_env, container) in envs.items():
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
            env.update(manifest_env)
            for mount in container.get("volumeMounts", []):  # the Secret's files, moved under tmp
                where = tmp_path / module / mount["mountPath"].lstrip("/")
                where.mkdir(parents=True)
                (where / "public.pem").write_bytes(public)
                for name, value in env.items():
                    env[name] = value.replace(mount["mountPath"], str(where))
            env.update(REDIS_URL=settings.redis_url, MONGO_URL=settings.mongo_url, MONGO_DB=settings.mongo_db)
            # Each listener keeps the manifest's host; only its port moves off containerPort: the
            # variable that names it (ConfigMap), else the setting whose default it is.
            for declared in container.get("ports", []):
                number = str(declared["containerPort"])
                named = [k for k, v in manifest_env.items() if k.endswith("_PORT") and v == number]
                if not named:
                    assert module in LISTENS and number == str(getattr(Settings(), LISTENS[module].lower()))
                    named = [LISTENS[module]]
                (variable,) = named
                moved = free_port()
                ports[(module, declared.get("name") or number)] = moved
                ports[(module, declared["containerPort"])] = moved
                env[variable] = str(moved)
            log = tmp_path / f"{module}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
                )
            procs[module] = (proc, log)

        deadline = time.monotonic() + 60
        probed = set()
        for module, (_, container) in envs.items():  # every probe of every container answers 200
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    get = container[probe]["httpGet"]
                    wait_ok(
                        f"http://127.0.0.1:{ports[(module, get['port'])]}{get['path']}",
                        *procs[module],
                        deadline,
                    )
                    probed.add((module, get["path"]))
        assert {("ingest.api", "/healthz"), ("gateway", "/healthz"), ("gateway", "/readyz")} <= probed
        api = f"http://127.0.0.1:{ports[('ingest.api', 8000)]}"
        wait_for_line("worker ingest-worker-7d9f-x2k4 consuming", *procs["ingest.worker"], deadline)
        wait_for_line("flusher running", *procs["ingest.flusher"], deadline)

        # The API verifies the identity provider's tokens, and issues none.
        issuer = envs["ingest.api"][0]["JWT_ISSUER"]
        now = int(time.time())
        token = jwt.encode(
            {"sub": "ada", "name": "Ada", "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex,
             "aud": "scorecast", "iss": issuer},
            private, algorithm="RS256",
        )  # fmt: skip
        r = httpx.get(f"{api}/api/v1/stats/student", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        r = httpx.post(f"{api}/api/v1/auth/refresh", json={"refreshToken": token})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "token_issuer_disabled")
        r = httpx.post(f"{api}/api/v1/auth/login", json={"userId": "ada", "name": "Ada"})
        assert r.status_code == 404  # development login: off in the manifests
        for module, (proc, log) in procs.items():
            assert proc.poll() is None, f"{module} exited:\n{log.read_text()}"
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("path", ["/api/v1/auth/refresh", "/api/v1/auth/login"])
async def test_without_a_private_key_token_endpoints_answer_404(
    settings: Settings, redis: Any, mongo: Any, tmp_path: Path, path: str
) -> None:
    from ingest.api.app import create_app
    from tests.helpers import asgi_client

    _, public = rsa_pair(tmp_path)
    (tmp_path / "public.pem").write_bytes(public)
    rs256 = settings.replace(jwt_algorithm="RS256", jwt_public_key_file=str(tmp_path / "public.pem"))
    async with asgi_client(create_app(rs256), "http://ingest") as client:
        r = await client.post(path, json={"refreshToken": "x"} if path.endswith("refresh") else {})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "token_issuer_disabled")
