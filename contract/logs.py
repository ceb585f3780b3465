"""No secret in a log line: tokens are redacted from every log record a process creates.

uvicorn logs a WebSocket handshake at INFO with its path and query string
(``"WebSocket /api/v1/ws?access_token=…" [accepted]``), and a library or an exception message
may quote a header or a body. :func:`install_redaction` wraps the process's log record factory,
so every record of every logger — whatever handlers uvicorn's or ``basicConfig``'s logging
configuration installs later — has its access tokens, refresh tokens, bearer values and anything
shaped like a JWT replaced by ``[redacted]`` before a handler sees it. Each process's ``main``
calls it first.

``LOG_FORMAT=json`` (:func:`setup_logging`) writes one JSON object per line instead of text
(:class:`JsonFormatter`: ts, level, logger, message, exception); the redaction applies alike, and
both formats redact a traceback's text too. uvicorn's own loggers go through the same handler.
"""

from __future__ import annotations

import datetime as dt
import json
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


LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"


class RedactingFormatter(logging.Formatter):
    """The text format; a traceback's text is redacted too (the record factory sees only the
    message, and an exception's message may quote a token)."""

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact(super().formatStack(stack_info))


class JsonFormatter(RedactingFormatter):
    """One JSON object per record, on one line: ``ts`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message``, and ``exception`` (the traceback text) when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(*, log_format: str, level: str) -> None:
    """Configure this process's logging: redaction (:func:`install_redaction`) and one stderr
    handler on the root logger, in ``log_format`` (``text`` or ``json``). Each process's ``main``
    calls it first. Raises ValueError for another format."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    install_redaction()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its own default for text (as before); for json none, so that
    uvicorn installs no handler and its loggers propagate to the root handler of
    :func:`setup_logging`."""
    from uvicorn.config import LOGGING_CONFIG  # only the HTTP processes have uvicorn loaded

    return None if log_format == "json" else LOGGING_CONFIG
