"""How simulated clients talk to the stack, and the record of every answer they got.

:class:`Recorder` counts every HTTP status and WebSocket error code and judges each against the
outage windows the fault injector opened: a 5xx other than 503 is always a violation, a 503 or a
WebSocket ``unavailable`` only outside a Redis/MongoDB outage (plus the policy's grace).
:class:`Api` sends one request until it gets a definite answer: a lost answer (connection error,
timeout, 503) or a 429 is retried with the SAME body, so an actionId is never dropped or doubled
by the client. :class:`Identity` logs in, refreshes tokens before they expire and logs in again
when a refresh token was spent by a lost answer.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import httpx

from sim.policy import Policy


class Unresolved(Exception):
    """A request got no definite answer before the simulation's hard deadline."""


@dataclasses.dataclass
class Window:
    kind: str
    start: float
    end: float | None = None


class Recorder:
    """Every answer of the run, and the violations found while it ran."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.statuses: collections.Counter[str] = collections.Counter()
        self.ws_errors: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.windows: list[Window] = []
        self.actions = 0
        self.faults = 0
        self.lost_answers = 0

    def violation(self, text: str) -> None:
        if len(self.violations) < 10_000:
            self.violations.append(text)

    def outage(self, kind: str) -> Window:
        window = Window(kind, time.monotonic())
        self.windows.append(window)
        return window

    def in_outage(self, start: float, end: float) -> bool:
        """Whether [start, end] overlaps an outage window (widened by the grace)."""
        grace = self.policy.outage_grace_s
        for w in self.windows:
            w_end = w.end + grace if w.end is not None else float("inf")
            if start <= w_end and end >= w.start:
                return True
        return False

    def http(self, route: str, status: int, start: float) -> None:
        self.statuses[f"{route} {status}"] += 1
        if status >= 500 and status != 503:
            self.violation(f"{route} answered {status}")
        elif status == 503 and not self.in_outage(start, time.monotonic()):
            self.violation(f"{route} answered 503 with no outage going on")

    def ws_error(self, code: str, start: float, context: str) -> None:
        self.ws_errors[code] += 1
        if code == "unavailable":
            if not self.in_outage(start, time.monotonic()):
                self.violation(f"WebSocket unavailable with no outage going on ({context})")
        elif code != "token_expired":
            self.violation(f"WebSocket error {code} for an honest client ({context})")


BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.0)


class Api:
    """HTTP to the ingest API with definite answers (see the module docstring)."""

    def __init__(self, base_url: str, recorder: Recorder, *, hard_deadline: float) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0))
        self.recorder = recorder
        self.hard_deadline = hard_deadline

    async def close(self) -> None:
        await self.http.aclose()

    async def send(
        self,
        method: str,
        path: str,
        route: str,
        *,
        token: str | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        retry_429: bool = True,
        on_lost: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """The first definite answer (anything but a lost answer, a 503 and, with ``retry_429``,
        a 429). ``on_lost`` is called for each attempt whose answer was lost (connection error,
        timeout): it may have taken effect. Raises Unresolved past the hard deadline."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        attempt = 0
        while True:
            start = time.monotonic()
            try:
                response = await self.http.request(method, path, json=body, params=params, headers=headers)
            except httpx.TransportError:
                self.recorder.statuses[f"{route} lost"] += 1
                self.recorder.lost_answers += 1
                if on_lost is not None:
                    on_lost()
            else:
                self.recorder.http(route, response.status_code, start)
                if response.status_code == 429 and retry_429:
                    await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 2.0))
                    continue
                if response.status_code != 503:
                    return response
                if on_lost is not None:
                    on_lost()  # a 503 may come after part of the work was done
            if time.monotonic() > self.hard_deadline:
                raise Unresolved(f"{method} {path}: no definite answer before the deadline")
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1


@dataclasses.dataclass(frozen=True)
class Profile:
    user_id: str
    name: str
    region: str | None = None
    roles: tuple[str, ...] = ()
    tz: str = "UTC"


class Identity:
    """One user's tokens: logged in once, refreshed before expiry, logged in again when needed."""

    REFRESH_AHEAD_S = 5.0

    def __init__(self, api: Api, profile: Profile) -> None:
        self.api = api
        self.profile = profile
        self.access = ""
        self.refresh_token = ""
        self.expires_at = 0.0
        self.refreshes = 0
        self._lock = asyncio.Lock()

    async def login(self) -> None:
        p = self.profile
        body: dict[str, Any] = {"userId": p.user_id, "name": p.name, "roles": list(p.roles), "timeZone": p.tz}
        if p.region:
            body["region"] = p.region
        r = await self.api.send("POST", "/api/v1/auth/login", "login", body=body)
        if r.status_code != 200:
            raise RuntimeError(f"login of {p.user_id} answered {r.status_code}: {r.text}")
        self._take(r.json())

    def _take(self, pair: dict[str, Any]) -> None:
        self.access = pair["accessToken"]
        self.refresh_token = pair["refreshToken"]
        self.expires_at = time.monotonic() + float(pair["expiresIn"])

    async def refresh(self) -> None:
        """A new token pair through the single-use refresh token (a new login if it was spent)."""
        async with self._lock:
            r = await self.api.send(
                "POST", "/api/v1/auth/refresh", "refresh", body={"refreshToken": self.refresh_token}
            )
            if r.status_code == 200:
                self.refreshes += 1
                self._take(r.json())
            elif r.status_code == 401:
                # A lost answer spent the refresh token (the API tells us so): log in again.
                await self.login()
            else:
                raise RuntimeError(f"refresh of {self.profile.user_id} answered {r.status_code}: {r.text}")

    async def token(self) -> str:
        if time.monotonic() > self.expires_at - self.REFRESH_AHEAD_S:
            await self.refresh()
        return self.access

    async def send(
        self, method: str, path: str, route: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        """``Api.send`` with this user's token; a 401 (token expired in flight) refreshes once."""
        r = await self.api.send(method, path, route, token=await self.token(), body=body, params=params)
        if r.status_code == 401:
            await self.refresh()
            r = await self.api.send(method, path, route, token=self.access, body=body, params=params)
        return r
