"""Serve the ingest API: ``python -m ingest.api``."""

from __future__ import annotations

import uvicorn

from contract.logs import install_redaction, setup_logging, uvicorn_log_config
from contract.settings import Settings
from ingest.api.app import create_app


def main() -> None:
    install_redaction()
    settings = Settings.from_env()
    setup_logging(log_format=settings.log_format, level=settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format),
        loop="uvloop",
        http="httptools",
        access_log=False,
        # uvicorn would trust X-Forwarded-For from 127.0.0.1 by default; the client address is
        # decided by TRUSTED_PROXIES alone (ingest.api.client).
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_timeout_s),
    )


if __name__ == "__main__":
    main()
