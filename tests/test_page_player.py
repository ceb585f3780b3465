"""The video player page in real headless Chromium: it resumes where a previous session left off."""

from __future__ import annotations

import asyncio
import re

import httpx
from playwright.async_api import Browser, Page

from contract.auth import TokenIssuer
from devstack.demo import DEMO_COURSE, DEMO_COURSE_ID
from devstack.processes import Stack
from tests.browser import chromium
from tests.eventually import eventually
from tests.helpers import bearer


async def log_in(browser: Browser, stack: Stack, user_id: str, *, init_script: str = "") -> Page:
    """A fresh browser profile (no stored tokens, no stored position) logging in as ``user_id``."""
    context = await browser.new_context()
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    await page.goto(stack.gateway_url + "/player.html")
    await page.fill("#name", "Grace")
    await page.fill("#user-id", user_id)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#status[data-state=open]")
    await page.wait_for_function("document.getElementById('video').readyState >= 1")
    return page


async def test_the_player_resumes_where_a_previous_session_left_off(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start_all()
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        r = await http.put(f"/api/v1/courses/{DEMO_COURSE_ID}", json=DEMO_COURSE, headers=bearer(admin))
        assert r.status_code == 200
    async with chromium() as browser:
        first = await log_in(browser, stack, "grace")
        assert await first.text_content("#resume") == ""  # nothing to resume yet
        await first.evaluate("document.getElementById('video').currentTime = 12.5")
        await first.wait_for_selector("#saved[data-seq]")  # the seek was pinged and acked
        await first.context.close()

        second = await log_in(browser, stack, "grace")
        await second.wait_for_function("document.getElementById('video').dataset.resumedAt !== undefined")
        position = await second.evaluate("document.getElementById('video').currentTime")
        assert abs(position - 12.5) < 0.5
        assert await second.text_content("#resume") == "resumed at 0:12"
        items = await second.locator("#lectures li").evaluate_all("els => els.map(e => e.className)")
        assert items == ["", "locked", "locked"]  # only the first lecture is open so far
        await second.context.close()


async def test_watching_to_the_end_completes_and_unlocks_the_next_lecture(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start_all()
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    user = issuer.access_token(user_id="finisher", name="Grace")
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await http.put(f"/api/v1/courses/{DEMO_COURSE_ID}", json=DEMO_COURSE, headers=bearer(admin))
    async with chromium() as browser, httpx.AsyncClient(base_url=stack.ingest_url) as http:
        page = await log_in(browser, stack, "finisher")
        # Seeking to the end and playing the last half second resumes there, completes nothing.
        await page.evaluate("const v = document.getElementById('video'); v.currentTime = 29.5; v.play()")
        await page.wait_for_function("document.getElementById('video').ended")
        view = await eventually(
            lambda: http.get(f"/api/v1/progress/{DEMO_COURSE_ID}", headers=bearer(user)),
            until=lambda r: r.json()["lastPosition"] == 30,
        )
        assert view.json()["completedLectures"] == []
        # Watching it from the start, at 2x (the default maximum rate), completes it.
        await page.evaluate(
            "const v = document.getElementById('video'); v.currentTime = 0; v.playbackRate = 2; v.play()"
        )
        await page.wait_for_selector("#lectures li.done", timeout=60_000)
        classes = await page.locator("#lectures li").evaluate_all("els => els.map(e => e.className)")
        assert classes == ["done", "", "locked"]
        assert await page.text_content("#completion") == "33.3"
        await page.context.close()


# Counts, in the page itself, every progress ping the page's WebSocket sends: a ping sent from a
# `seeked` handler is counted before the handler returns, so no frame can be missed by timing.
COUNT_PINGS = """
window.__pings = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  try {
    const message = JSON.parse(data);
    if (message.type === "progress") window.__pings.push(message.position);
  } catch (err) {}
  return send.call(this, data);
};
"""
# Records where the video's `seeked` events landed, from a listener added after the page's own:
# once it has recorded a seek, the page's handler of that same event has run.
RECORD_SEEKS = """
window.__seeks = [];
const video = document.getElementById('video');
video.addEventListener('seeked', () => window.__seeks.push(video.currentTime));
"""


async def seeked_to(page: Page, position: float) -> None:
    await page.wait_for_function(f"window.__seeks.some(t => Math.abs(t - {position}) < 0.5)")


async def pings_sent(page: Page) -> list[float]:
    sent: list[float] = await page.evaluate("window.__pings")
    return sent


async def pings_stored(stack: Stack) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{stack.gateway_url}/metrics")).text
    match = re.search(r"^scorecast_gateway_progress_pings_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


async def test_a_device_that_follows_another_never_pings_the_move_back(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start_all()
    admin = issuer.access_token(user_id="root", name="Root", roles=["admin"])
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        r = await http.put(f"/api/v1/courses/{DEMO_COURSE_ID}", json=DEMO_COURSE, headers=bearer(admin))
        assert r.status_code == 200
    async with chromium() as browser:
        laptop = await log_in(browser, stack, "twin", init_script=COUNT_PINGS)
        phone = await log_in(browser, stack, "twin", init_script=COUNT_PINGS)
        for page in (laptop, phone):
            await page.evaluate(RECORD_SEEKS)
        before_laptop, before_phone = len(await pings_sent(laptop)), len(await pings_sent(phone))
        stored = await pings_stored(stack)

        # The learner seeks on the laptop (paused): the phone, paused too, follows the move.
        await laptop.evaluate("document.getElementById('video').currentTime = 12.5")
        await laptop.wait_for_selector("#saved[data-seq]")
        await seeked_to(phone, 12.5)  # the phone applied the move
        assert await phone.text_content("#other-device") == "continued on another device at 0:12"
        assert (await pings_sent(phone))[before_phone:] == []
        assert (await pings_sent(laptop))[before_laptop:] == [12.5]

        # Now the learner seeks on the phone: the laptop follows, and pings nothing either.
        await phone.evaluate("document.getElementById('video').currentTime = 20")
        await seeked_to(laptop, 20)
        assert (await pings_sent(laptop))[before_laptop:] == [12.5]
        assert (await pings_sent(phone))[before_phone:] == [20]

        # The gateway stored exactly the two seeks the learner made; nothing was refused.
        assert await eventually(lambda: pings_stored(stack), until=lambda n: n >= stored + 2) == stored + 2
        for page in (laptop, phone):
            assert await page.text_content("#player-error") == ""
            assert await page.get_attribute("#status", "data-state") == "open"
        assert await laptop.text_content("#other-device") == "continued on another device at 0:20"
        assert await pings_stored(stack) == stored + 2

        # The learner plays the laptop to the very end: the phone follows every move, the last
        # ones to the end, and pings nothing (its `ended` used to ping, and the laptop then read
        # that the other device "continued" at its own end).
        await laptop.evaluate(
            "() => { const v = document.getElementById('video'); v.playbackRate = 2; return v.play(); }"
        )
        await laptop.wait_for_function("document.getElementById('video').ended")
        await seeked_to(phone, 30)
        sent = await eventually(lambda: pings_sent(laptop), until=lambda p: p[-1:] == [30])
        await asyncio.sleep(1.5)  # room for a stray ping from the phone to arrive: none may
        assert (await pings_sent(phone))[before_phone:] == [20]
        # Stored: every ping the laptop sent in this test, and the phone's one seek.
        expected = stored + len(sent[before_laptop:]) + 1
        assert await eventually(lambda: pings_stored(stack), until=lambda n: n >= expected) == expected
        assert await laptop.text_content("#other-device") == "continued on another device at 0:20"
        await laptop.context.close()
        await phone.context.close()


REFUSED_PING = """async (token) => {
  const { SocketClient } = await import("/scorecast.js");
  return await new Promise((resolve) => {
    const client = new SocketClient(() => token, {
      status: ({ status }) => {
        if (status === "open") {
          client.progress({ courseId: "nowhere", lectureId: "l", position: 1, duration: 10, seq: 4 });
          client.progress({ courseId: "nowhere", lectureId: "l", position: 2, duration: 10, seq: 5 });
        }
      },
      error: (error) => {
        if (error.seq === 5) {
          resolve({ unacked: [...client.unacked.keys()], code: error.code });
          client.close();
        }
      },
    });
  });
}"""


async def test_the_socket_client_forgets_a_ping_the_gateway_refused(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start("gateway")
    token = issuer.access_token(user_id="grace", name="Grace")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(stack.gateway_url + "/api/v1/config")
        result = await page.evaluate(REFUSED_PING, token)
        # Both pings were refused with their seq: neither is kept for a resend after a reconnect.
        assert result == {"unacked": [], "code": "unknown_course"}
