"""The leaderboard page across access-token expiries, in real headless Chromium: the gateway ends
the SSE stream at the token's exp with ``reconnect``, and the page's feed reopens it with the
cookie its client refreshed in the meantime — it stays live."""

from __future__ import annotations

from playwright.async_api import Page

from contract.auth import TokenIssuer
from devstack.processes import Stack
from tests.browser import chromium
from tests.eventually import eventually
from tests.helpers import scorer_token
from tests.test_page_leaderboard import post_scores, row_score

# Every change of the page's connection status, in order.
RECORD_STATUS = """() => {
  window.statuses = [];
  new MutationObserver(() => window.statuses.push(document.getElementById("status").dataset.state))
    .observe(document.getElementById("status"), { attributes: true, attributeFilter: ["data-state"] });
}"""


async def statuses(page: Page) -> list[str]:
    found: list[str] = await page.evaluate("window.statuses")
    return found


async def test_the_page_stays_live_across_token_expiries(stack: Stack, issuer: TokenIssuer) -> None:
    # Tokens live 4 s: the page refreshes them every second, streams end at each one's exp.
    stack.settings = stack.settings.replace(access_token_ttl_s=4)
    stack.start_all()
    scorer = scorer_token(TokenIssuer(stack.settings.replace(access_token_ttl_s=900)))
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(stack.gateway_url + "/")
        await page.fill("#name", "Grace")
        await page.click("#login button[type=submit]")
        await page.wait_for_selector("#status[data-state=open]")
        await page.evaluate(RECORD_STATUS)
        # Two expiries: each time the stream ended and the feed came back, with a fresh token.
        await eventually(
            lambda: statuses(page),
            until=lambda s: s.count("reconnecting") >= 2 and s[-1] == "open",
            timeout_s=30,
        )
        await post_scores(stack, scorer, "rival", [7])
        assert await eventually(lambda: row_score(page, "rival"), until=lambda s: s == "7") == "7"
        await page.close()
