"""The leaderboard page in real headless Chromium against the real stack."""

from __future__ import annotations

import time
from typing import Any

import httpx
from playwright.async_api import Page

from contract.auth import TokenIssuer
from devstack.processes import Stack
from store.boards import BoardStore
from tests.browser import chromium, open_connections
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token
from tests.test_gateway_sse import apply


async def row_score(page: Page, user_id: str) -> str | None:
    cell = page.locator(f'#rows tr[data-user-id="{user_id}"] td.score')
    return await cell.text_content() if await cell.count() else None


async def post_scores(stack: Stack, scorer: str, user_id: str, increments: list[int]) -> None:
    async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
        await login(http, user_id, user_id.title(), region="EU")
        for increment in increments:
            r = await score(http, scorer, user_id, increment)
            assert r.status_code == 202, r.text


async def test_two_tabs_update_live_over_one_sse_connection(stack: Stack, issuer: TokenIssuer) -> None:
    stack.start_all()
    rival = scorer_token(issuer)
    async with chromium() as browser:
        context = await browser.new_context()
        first = await context.new_page()
        await first.goto(stack.gateway_url + "/")
        await first.fill("#name", "Grace Hopper")
        await first.click("#login button[type=submit]")
        await first.wait_for_selector("#app:not(.hidden)")
        await first.wait_for_selector("#status[data-state=open]")
        second = await context.new_page()  # same browser: logged in already, same SharedWorker
        await second.goto(stack.gateway_url + "/")
        await second.wait_for_selector("#app:not(.hidden)")

        await post_scores(stack, rival, "rival", [30, 12])
        for page in (first, second):
            assert await eventually(lambda p=page: row_score(p, "rival"), until=lambda s: s == "42") == "42"

        await first.click("#score")  # the page's own button scores 10 for the logged-in user
        me = await first.evaluate(
            "JSON.parse(atob(JSON.parse(localStorage['scorecast.tokens']).accessToken.split('.')[1])).sub"
        )
        for page in (first, second):
            assert await eventually(lambda p=page: row_score(p, me), until=lambda s: s == "10") == "10"
        assert await first.locator("#rows tr").count() == 2
        assert await open_connections(stack.gateway_url, "sse") == 1
        await context.close()
    assert await eventually(lambda: open_connections(stack.gateway_url, "sse"), until=lambda n: n == 0) == 0


async def test_without_shared_worker_each_tab_has_its_own_event_source(
    stack: Stack, issuer: TokenIssuer
) -> None:
    stack.start_all()
    rival = scorer_token(issuer)
    async with chromium() as browser:
        context = await browser.new_context()
        await context.add_init_script("delete window.SharedWorker")
        pages = []
        for _ in range(2):
            page = await context.new_page()
            await page.goto(stack.gateway_url + "/")
            pages.append(page)
        await pages[0].fill("#name", "Ada")
        await pages[0].click("#login button[type=submit]")
        await pages[0].wait_for_selector("#app:not(.hidden)")  # logged in: the tokens are stored
        await pages[1].reload()
        for page in pages:
            await page.wait_for_selector("#status[data-state=open]")
        await post_scores(stack, rival, "rival", [5])
        for page in pages:
            assert await eventually(lambda p=page: row_score(p, "rival"), until=lambda s: s == "5") == "5"
        assert await open_connections(stack.gateway_url, "sse") == 2
        await context.close()


async def test_a_tab_opened_later_is_live_at_once_and_learners_see_no_version_number(
    stack: Stack, redis: Any
) -> None:
    # A rebuilt board's version is at least the epoch in milliseconds: a 13-digit number.
    store = BoardStore(redis)
    await store.stage_and_commit("global", [], version=int(time.time() * 1000), force=True)
    version = await apply(store, "global", {"rival": 42})
    assert len(str(version)) == 13
    stack.start_all()
    async with chromium() as browser:
        context = await browser.new_context()
        first = await context.new_page()
        await first.goto(stack.gateway_url + "/")
        await first.fill("#name", "Grace Hopper")
        await first.click("#login button[type=submit]")
        await first.wait_for_selector("#status[data-state=open]")
        assert await eventually(lambda: row_score(first, "rival"), until=lambda s: s == "42") == "42"

        # The SharedWorker's feed is open already: the new tab gets its board and its status.
        second = await context.new_page()
        await second.goto(stack.gateway_url + "/")
        await second.wait_for_selector("#app:not(.hidden)")
        assert await eventually(lambda: row_score(second, "rival"), until=lambda s: s == "42") == "42"
        await second.wait_for_selector("#status[data-state=open]", timeout=10_000)
        assert await second.text_content("#status") == "live"
        assert await open_connections(stack.gateway_url, "sse") == 1

        for page in (first, second):
            # The version stays machine-readable for scripts, but is not shown to the learner.
            assert await page.get_attribute("#rows", "data-version") == str(version)
            assert str(version) not in await page.inner_text("body")
        await context.close()
