"""Exceptions of the Scorecast contract package.

ScorecastError                 root; carries ``code`` (snake_case), ``message`` and an HTTP ``status``
├── BadRequest                 400: malformed or out-of-range input
│   ├── BoardNameError         400: a board name that is not one of the known segments
│   └── PayloadTooLarge        413: a body over the configured limit
├── AuthError                  401: missing, expired, tampered or otherwise unacceptable token
├── Forbidden                  403: authenticated but not allowed
│   └── TemporarilyBlocked     403: a flagged user may not score until ``until`` (ISO 8601)
├── NotFound                   404
│   └── UnknownBoard           404: a well-formed board name that names no board one may follow
├── Conflict                   409
├── TooManyRequests            429: rate limited or queue full; carries ``retry_after_s``
└── Unavailable                503: a backing service cannot be reached
"""

from __future__ import annotations


class ScorecastError(Exception):
    """Root of every error Scorecast raises on purpose. Maps to API.md's error shape."""

    status = 500
    default_code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message


class BadRequest(ScorecastError):
    status = 400
    default_code = "bad_request"


class BoardNameError(BadRequest):
    default_code = "invalid_board"


class PayloadTooLarge(BadRequest):
    status = 413
    default_code = "payload_too_large"


class AuthError(ScorecastError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ScorecastError):
    status = 403
    default_code = "forbidden"


class TemporarilyBlocked(Forbidden):
    default_code = "temporarily_blocked"

    def __init__(self, message: str, *, until: str) -> None:
        super().__init__(message)
        self.until = until


class NotFound(ScorecastError):
    status = 404
    default_code = "not_found"


class UnknownBoard(NotFound):
    default_code = "unknown_board"


class Conflict(ScorecastError):
    status = 409
    default_code = "conflict"


class TooManyRequests(ScorecastError):
    status = 429
    default_code = "rate_limited"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int = 1, bucket: str = ""
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.bucket = bucket  # which rate limit refused (``user``, ``region``); for metrics


class Unavailable(ScorecastError):
    status = 503
    default_code = "unavailable"
