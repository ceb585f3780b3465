"""No secret in a log line: tokens are redacted from every log record a process creates.

uvicorn logs a WebSocket handshake at INFO with its path and query string
(``"WebSocket /api/v1/ws?access_token=…" [accepted]``), and a library or an exception message
may quote a header or a body. :func:`install_redaction` wraps the process's log record factory,
so every record of every logger — whatever handlers uvicorn's or ``basicConfig``'s logging
configuration installs later — has its access tokens, refresh tokens, bearer values and anything
shaped like a JWT replaced by ``[redacted]`` before a handler sees it. Each process's ``main``
calls it first.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_SECRETS = re.compile(
    r"""
    (?P<key>
        (?:access_token|refresh_token|scorecast_token)=        # query parameters, cookies
      | ["']?(?:refreshToken|accessToken|refresh_token|access_token)["']?\s*[:=]\s*["']?  # JSON, reprs
      | \b[Bb]earer\s+                                          # Authorization values
    )
    (?P<value>[^\s&"',;)}\]]+)
    | (?P<jwt>\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)  # a JWT anywhere else
    """,
    re.VERBOSE,
)


def _replace(match: re.Match[str]) -> str:
    return REDACTED if match.group("jwt") else match.group("key") + REDACTED


def redact(text: str) -> str:
    """``text`` with every token value replaced by ``[redacted]`` (the keys stay readable)."""
    return _SECRETS.sub(_replace, text)


def install_redaction() -> None:
    """Redact secrets from every log record created from now on in this process. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "scorecast_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    factory.scorecast_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
