"""The video player page in real headless Chromium: it resumes where a previous session left off."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser, Page

from contract.auth import TokenIssuer
from devstack.demo import DEMO_COURSE, DEMO_COURSE_ID
from devstack.processes import Stack
from tests.browser import chromium
from tests.helpers import bearer


async def log_in(browser: Browser, stack: Stack, user_id: str) -> Page:
    """A fresh browser profile (no stored tokens, no stored position) logging in as ``user_id``."""
    context = await browser.new_context()
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
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await http.put(f"/api/v1/courses/{DEMO_COURSE_ID}", json=DEMO_COURSE, headers=bearer(admin))
    async with chromium() as browser:
        page = await log_in(browser, stack, "finisher")
        await page.evaluate("const v = document.getElementById('video'); v.currentTime = 29.5; v.play()")
        await page.wait_for_selector("#lectures li.done")
        classes = await page.locator("#lectures li").evaluate_all("els => els.map(e => e.className)")
        assert classes == ["done", "", "locked"]
        assert await page.text_content("#completion") == "33.3"
        await page.context.close()
