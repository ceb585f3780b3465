# One image for every Scorecast process; the Deployment's command picks the process.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY contract contract
COPY store store
COPY gateway gateway
COPY ingest ingest
COPY devstack devstack
COPY static static
RUN pip install --no-cache-dir . && useradd --uid 10001 scorecast
ENV STATIC_DIR=/app/static
USER scorecast
