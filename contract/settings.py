"""One settings object for every Scorecast process, read from the environment once.

Every field maps to an upper-case environment variable of the same name (``flush_interval_s``
← ``FLUSH_INTERVAL_S``). Processes call :meth:`Settings.from_env` at start and pass the object
into constructors; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from contract.errors import BadRequest

# Defaults on a Redis Cluster (see ``stream_partitions``): a few parts per master of a 3-master
# cluster, so the parts spread over every node and a node added later gets its share.
CLUSTER_STREAM_PARTITIONS = 8
CLUSTER_DIRTY_BUCKETS = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    # Backing services. Empty URL: `make run` starts an embedded server instead.
    redis_url: str = "redis://127.0.0.1:6379/0"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "scorecast"
    # REDIS_URL names any node of a Redis Cluster: every process speaks the cluster protocol
    # (store.clients), and board and user events travel on sharded Pub/Sub (SPUBLISH/SSUBSCRIBE).
    redis_cluster: bool = False
    # Hot keys split for a cluster, each part its own hash tag (so its own slot, spread over the
    # nodes): the score and completion streams into partitions by user (one user's actions stay in
    # order), the dirty set of progress keys into buckets. 0: one (today's single keys) on one
    # Redis, CLUSTER_STREAM_PARTITIONS / CLUSTER_DIRTY_BUCKETS on a cluster. Every process must
    # count alike; change a count only with the streams drained and the dirty set flushed.
    stream_partitions: int = 0
    progress_dirty_buckets: int = 0

    # Listeners
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8000
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8001
    # Where the page finds the ingest API (CORS origin is the gateway's).
    public_ingest_url: str = "http://127.0.0.1:8000"
    cors_origins: str = "http://127.0.0.1:8001,http://localhost:8001"

    # Auth. HS256 with jwt_secret, or RS256 with a key pair (PEM files).
    jwt_algorithm: str = "HS256"
    jwt_secret: str = ""
    jwt_private_key_file: str = ""
    jwt_public_key_file: str = ""
    jwt_audience: str = "scorecast"
    jwt_issuer: str = "scorecast-dev"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    dev_login_enabled: bool = False

    # Score writes
    max_score_increment: int = 1000
    rate_limit_per_s: float = 20.0  # per scored user
    rate_limit_burst: int = 40
    region_rate_limit_per_s: float = 500.0  # per region of the scored user (seed 003)
    region_rate_limit_burst: int = 1000
    queue_max_length: int = 100_000  # backlog (undelivered + pending entries) that refuses writes
    queue_backlog_max_age_s: float = 0.1  # an API process re-reads the backlog at most this often
    action_guard_ttl_s: int = 7 * 24 * 3600  # also how long Redis keeps a user's quiz tally
    quiz_counting: str = "best"  # which attempt of a quiz the boards count: "best" or "first"
    quiz_reveal_correct: bool = True  # tell `correct` after the last allowed attempt (off: never)
    max_body_bytes: int = 16 * 1024
    # Client address of score writes (audit log): X-Forwarded-For is honoured only when the peer
    # is one of these comma-separated addresses or CIDR networks (a reverse proxy you run).
    trusted_proxies: str = ""
    audit_user_agent_max_chars: int = 256

    # Anomaly flags (evaluated by the worker as actions are applied; see ingest/anomaly.py).
    # A flag is raised once per user, rule and window of flag_window_s.
    flag_window_s: int = 3600
    # jump: an increment above flag_jump_factor x the user's mean of their last
    # flag_norm_samples increments AND x the global board's mean, and at least
    # flag_jump_min_increment (a new user is held against the board alone).
    flag_jump_factor: float = 10.0
    flag_jump_min_increment: int = 100
    flag_norm_samples: int = 20
    flag_board_norm_samples: int = 200
    # burst: more than flag_burst_actions applied actions of one user within flag_burst_window_s.
    flag_burst_actions: int = 50
    flag_burst_window_s: float = 60.0
    # quiz_too_fast: a quiz submitted sooner after it was fetched than this per question.
    flag_quiz_min_ms_per_question: int = 2000
    # coverage_too_fast: a lecture completed sooner after its first watched second than its
    # covered seconds allow at this playback rate (the coverage rules already cap one device at
    # max_playback_rate; this catches what gets past them).
    flag_coverage_max_rate: float = 2.5
    # Fetching a quiz (GET /api/v1/quizzes/{quizId}) starts its clock; with this on, a
    # submission without a fetch first is refused (409 quiz_not_started).
    quiz_require_start: bool = False
    quiz_start_ttl_s: int = 24 * 3600
    # A flagged user cannot score for this long (403 temporarily_blocked); 0 = flags only.
    flag_block_s: int = 0

    # Worker
    stream_batch_size: int = 200
    stream_block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    stream_trim_interval_s: float = 1.0  # how often a consumer trims entries every group finished
    dead_letter_max_length: int = 10_000  # newest dead letters kept per stream
    consumer_name: str = ""
    # A consumer refreshes its heartbeat this often; one silent for the TTL is taken for dead and
    # its pending entries are claimed at once (CLAIM_IDLE_MS stays for consumers that never announce).
    consumer_heartbeat_interval_ms: int = 1000
    consumer_heartbeat_ttl_ms: int = 3000

    # Outages: while Redis or MongoDB is unreachable, loops probe it this often and resume at once.
    outage_probe_interval_s: float = 0.2

    # Leaderboards
    top_k: int = 10
    # The boards a client may follow (SSE, WebSocket): global, region:<one of board_regions>
    # (comma-separated codes), course:<an existing course>, and the current week/month with the
    # board_weeks_back weeks / board_months_back months before it.
    board_regions: str = "EU,NA,APAC,LATAM"
    board_weeks_back: int = 12
    board_months_back: int = 12
    user_cache_ttl_s: int = 24 * 3600
    # Seasons (ingest.seasons): a weekly/monthly board is rolled over season_grace_s after its
    # period ended (actions queued before the end are applied first): its final top
    # season_archive_size go to MongoDB once, a board_closed event goes on its stream, and its
    # Redis keys expire season_retention_s later (reads answer from the archive then). The worker
    # looks for closed periods every season_check_interval_s.
    season_grace_s: float = 60.0
    season_retention_s: int = 7 * 24 * 3600
    season_check_interval_s: float = 30.0
    season_archive_size: int = 100
    board_closed_stream_max_length: int = 100_000
    # A gateway reads a closed period's archive once (it never changes); a closed period without
    # one (not rolled over yet, never scored) is looked up again at most once per this interval.
    archive_miss_ttl_s: float = 5.0

    # GraphQL (POST /graphql on the ingest API): how deep and how costly one document may be.
    # Cost: each root field 1, `leaderboard` its `limit`, `around` 2 x `range` + 1 (a variable
    # counts as the largest value it may take). GraphiQL is served only with dev_login_enabled.
    graphql_max_depth: int = 6
    graphql_max_cost: int = 300
    graphql_max_aliases: int = 20
    graphql_max_tokens: int = 2000

    # Gateway
    broadcast_interval_s: float = 1.0
    heartbeat_interval_s: float = 15.0
    sse_retry_ms: int = 3000
    slow_client_timeout_s: float = 10.0
    drain_timeout_s: float = 10.0
    reconnect_jitter_ms: int = 5000
    graceful_shutdown_timeout_s: float = 15.0
    ws_max_message_bytes: int = 4096
    ws_rate_limit_per_s: float = 20.0
    ws_rate_limit_burst: int = 40
    ws_max_violations: int = 20
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    # How long the gateway gathers autosave pings before it sends them to Redis in one round trip
    # (0: at once). Pings arriving while a round trip is in flight wait for it in any case.
    ping_batch_window_ms: float = 2.0
    # The gateway's fast paths (gateway/fastpath/: frames written straight to sockets, the
    # WebSocket served from socket callbacks, the ping pipeline packed by hand), used when the
    # libraries have the shape they were checked against; 0 forces the portable ASGI/redis-py paths.
    fast_path: bool = True
    # Boards one gateway process follows at most (each has a loop, a cache and a Pub/Sub channel).
    gateway_max_boards: int = 10_000
    # How long a subscribe (or the start of an SSE stream) may wait for its board before it is
    # answered `unavailable` (Redis down or slow).
    subscribe_timeout_s: float = 5.0
    # A board missing in Redis is asked of the worker at most once per this many seconds, over
    # every gateway (on the rebuild stream, apart from the score stream's queue_full budget).
    rebuild_request_interval_s: float = 5.0
    rebuild_stream_max_length: int = 10_000
    # Rank events (each viewer's own place on the boards it follows). Redis lookups of one
    # gateway are bounded by rank_lookups_per_s (one lookup = one viewer on one board; 0 turns
    # rank events off). Viewers whose own score changed go first, read at once by the own lane
    # (gateway.rank_push); every other viewer is looked up again within rank_refresh_s while the
    # budget covers (viewers / rank_refresh_s) per second. The other lookups of one tick
    # (rank_tick_s) go to Redis in one script call per board.
    rank_lookups_per_s: float = 5000.0
    rank_refresh_s: float = 5.0
    rank_tick_s: float = 0.25
    # In-process course metadata cache: known courses, and (fewer) ids found not to exist.
    course_cache_max_entries: int = 10_000
    course_cache_max_unknown: int = 1_000
    static_dir: str = ""

    # Progress (write-behind)
    flush_interval_s: float = 300.0
    flush_batch_size: int = 1000
    progress_ttl_s: int = 24 * 3600
    course_meta_ttl_s: int = 24 * 3600
    complete_threshold: float = 0.95
    completion_score: int = 10  # points on the course board for a completed lecture (at least)
    # Watched coverage: an advance between two pings of one device counts when it is at most
    # max_playback_rate x the wall-clock seconds between them, plus up to coverage_slack_s left
    # over from earlier pings; a device silent for coverage_max_gap_s starts afresh.
    max_playback_rate: float = 2.0
    coverage_slack_s: float = 2.0
    coverage_max_gap_s: float = 30.0

    # Operations: the worker and the flusher serve /metrics, /healthz and /readyz on a port of
    # their own (0: none) on metrics_host.
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 0
    flusher_metrics_port: int = 0

    log_level: str = "info"
    log_format: str = "text"  # text, or json: one JSON object per line (contract/logs.py)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then apply ``overrides``.

        Raises BadRequest when a variable cannot be parsed as its field's type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(field.name.upper())
            if raw is None:
                continue
            values[field.name] = _parse(field.name, field.type, raw)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.quiz_counting not in ("best", "first"):
            raise BadRequest(f"QUIZ_COUNTING must be best or first, not {self.quiz_counting!r}")
        if self.stream_partitions < 0 or self.progress_dirty_buckets < 0:
            raise BadRequest("STREAM_PARTITIONS and PROGRESS_DIRTY_BUCKETS must be 0 (automatic) or more")

    @property
    def stream_partition_count(self) -> int:
        """How many keys each of the score and completion streams is split into."""
        return self.stream_partitions or (CLUSTER_STREAM_PARTITIONS if self.redis_cluster else 1)

    @property
    def dirty_bucket_count(self) -> int:
        """How many keys the dirty set of progress keys is split into."""
        return self.progress_dirty_buckets or (CLUSTER_DIRTY_BUCKETS if self.redis_cluster else 1)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, type_name: Any, raw: str) -> Any:
    try:
        if type_name in ("bool", bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if type_name in ("int", int):
            return int(raw)
        if type_name in ("float", float):
            return float(raw)
        return raw
    except ValueError:
        raise BadRequest(f"environment variable {name.upper()}={raw!r} is not a valid {type_name}") from None
