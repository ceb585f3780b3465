"""The ingest HTTP API. ``python -m ingest.api`` serves it with uvicorn."""
