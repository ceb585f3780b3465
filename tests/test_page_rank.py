"""The leaderboard page's own place ("you: #1,234 · 56 pts to #1,233") in real headless Chromium,
live through the SharedWorker, against the real stack."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page

from contract.auth import TokenIssuer
from devstack.processes import Stack
from store.boards import BoardStore
from tests.browser import chromium, open_connections
from tests.eventually import eventually
from tests.helpers import login, score, scorer_token


async def my_rank(page: Page) -> str:
    return (await page.text_content("#my-rank")) or ""


async def shows(page: Page, text: str) -> str:
    return await eventually(lambda: my_rank(page), until=lambda got: got == text)


async def test_own_place_live_with_thousands_separators_and_replayed_to_a_new_tab(
    stack: Stack, issuer: TokenIssuer, redis: Any
) -> None:
    # 1,233 members at 66 points and more, and one at 5: a learner who scores 10 is #1,234,
    # 56 points behind #1,233.
    rows = [(f"s{i:04d}", 66 + i, i + 1) for i in range(1233)] + [("low", 5, 2000)]
    await BoardStore(redis).stage_and_commit("global", rows, version=3000, force=True)
    stack.start_all()
    scorer = scorer_token(issuer)
    async with chromium() as browser:
        context = await browser.new_context()
        first = await context.new_page()
        await first.goto(stack.gateway_url + "/")
        await first.fill("#name", "Grace Hopper")
        await first.click("#login button[type=submit]")
        await first.wait_for_selector("#status[data-state=open]")
        assert await shows(first, "you: not ranked yet") == "you: not ranked yet"

        await first.click("#score")  # the page's own button: 10 points for the logged-in user
        assert await shows(first, "you: #1,234 · 56 pts to #1,233") == "you: #1,234 · 56 pts to #1,233"

        # A tab opened later shares the SharedWorker's stream and gets the last place at once.
        second = await context.new_page()
        await second.goto(stack.gateway_url + "/")
        await second.wait_for_selector("#app:not(.hidden)")
        assert await shows(second, "you: #1,234 · 56 pts to #1,233") == "you: #1,234 · 56 pts to #1,233"
        assert await open_connections(stack.gateway_url, "sse") == 1

        # Someone passes the learner (5 -> 105): both tabs follow.
        async with httpx.AsyncClient(base_url=stack.ingest_url) as http:
            await login(http, "low", "Low")
            r = await score(http, scorer, "low", 100)
            assert r.status_code == 202, r.text
        for page in (first, second):
            assert await shows(page, "you: #1,235 · 56 pts to #1,234") == "you: #1,235 · 56 pts to #1,234"
        await context.close()


async def test_rank_text_at_first_place_and_singular(stack: Stack) -> None:
    stack.start("gateway")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(stack.gateway_url + "/rank.js")
        texts = await page.evaluate(
            """import('/rank.js').then(({ rankText }) => [
                rankText({ rank: 1, score: 5, gapToNext: null }),
                rankText({ rank: 2, score: 4, gapToNext: 1 }),
                rankText({ rank: 3, score: 4, gapToNext: 0 }),
                rankText({ rank: 12345, score: 1000, gapToNext: 2500 }),
                rankText({ rank: null, score: null, gapToNext: null }),
            ])"""
        )
        assert texts == [
            "you: #1",
            "you: #2 · 1 pt to #1",
            "you: #3 · 0 pts to #2",
            "you: #12,345 · 2,500 pts to #12,344",
            "you: not ranked yet",
        ]
