"""Real headless Chromium (Debian ``chromium``) driven by Playwright, for the page tests."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator

import httpx
from playwright.async_api import Browser, async_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian chromium is required for the page tests (make test installs it)"
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_connections(gateway_url: str, transport: str) -> int:
    """The gateway's own count of open connections of ``transport`` (its /metrics)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gateway_url}/metrics")).text
    match = re.search(rf'^scorecast_gateway_connections\{{transport="{transport}"\}} (\S+)$', text, re.M)
    assert match, text
    return int(float(match.group(1)))
