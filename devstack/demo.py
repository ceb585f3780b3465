"""The demo course that ``make run`` seeds, so the video player has something to play."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from contract.auth import TokenIssuer
from contract.settings import Settings

DEMO_COURSE_ID = "demo"
CLIP_SECONDS = 30  # static/media/lecture.webm

DEMO_COURSE = {
    "title": "Scorecast demo course",
    "sections": [
        {
            "sectionId": "start",
            "title": "Getting started",
            "lectures": [
                {"lectureId": "welcome", "title": "Welcome", "durationSeconds": CLIP_SECONDS, "marks": 5},
                {"lectureId": "setup", "title": "Setting up", "durationSeconds": CLIP_SECONDS, "marks": 5},
            ],
        },
        {
            "sectionId": "next",
            "title": "Going further",
            "lectures": [
                {"lectureId": "live", "title": "Leaderboards", "durationSeconds": CLIP_SECONDS, "marks": 10},
            ],
        },
    ],
}


def seed(environ: Mapping[str, str], *, timeout_s: float = 30.0) -> str:
    """PUT the demo course through the ingest API unless it exists. Returns what happened."""
    settings = Settings.from_env(environ)
    base = f"http://127.0.0.1:{settings.ingest_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/courses/{DEMO_COURSE_ID}", timeout=2):
                return "demo course present"
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                break
            raise
        except OSError:
            if time.monotonic() > deadline:
                return "ingest API not reachable; demo course not seeded"
            time.sleep(0.2)
    admin = TokenIssuer(settings).access_token(user_id="devstack", name="devstack", roles=["admin"])
    request = urllib.request.Request(
        f"{base}/api/v1/courses/{DEMO_COURSE_ID}",
        data=json.dumps(DEMO_COURSE).encode(),
        method="PUT",
        headers={"authorization": f"Bearer {admin}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        return "demo course seeded"
