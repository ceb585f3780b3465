"""deploy/grafana/scorecast.json asks only for series that exist: every metric name in every
PromQL expression of the dashboard is exported by the process that should export it, as read
by scraping the /metrics of real running processes (not by grepping the source)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import Stack
from devstack.servers import free_port

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "scorecast.json"

# Which process exports a metric, by name prefix.
EXPORTERS = {
    "scorecast_gateway_": "gateway",
    "scorecast_stream_": "ingest.worker",
    "scorecast_flush_": "ingest.flusher",
    "scorecast_score_writes": "ingest.api",
    "scorecast_auth_failures": "ingest.api",
    "scorecast_rate_limit_violations": "ingest.api",
    "scorecast_flags_": "ingest.api",
    "scorecast_blocks_": "ingest.api",
}

FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "topk",
    "bottomk", "abs", "clamp_min", "clamp_max", "delta", "deriv", "label_replace", "vector", "time",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"offset", "bool", "and", "or", "unless"}
TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
    | (?P<duration>(?<=\[)\d+[smhdwy])
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]])
    )""",
    re.VERBOSE,
)


def tokens(expr: str) -> list[tuple[str, str]]:
    """``expr`` as (kind, text) tokens; anything else is a syntax error."""
    found, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot parse {expr!r} at {expr[pos:]!r}"
        kind = m.lastgroup
        assert kind is not None
        found.append((kind, m.group(kind)))
        pos = m.end()
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects, after checking its brackets balance and that every
    function it calls is one PromQL has. Label names (in ``{}`` and ``by (...)``) are not metrics."""
    names: set[str] = set()
    stack: list[str] = []
    toks = tokens(expr)
    grouping = False  # inside by (...), without (...), on (...), ignoring (...)
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text in "([{" and kind == "op":
            stack.append(text)
            continue
        if text in ")]}" and kind == "op":
            assert stack and {"(": ")", "[": "]", "{": "}"}[stack.pop()] == text, f"unbalanced {expr!r}"
            grouping = False if text == ")" else grouping
            continue
        if kind != "name" or (stack and stack[-1] in "{["):
            continue
        if text in KEYWORDS:
            grouping = text in GROUPING
            continue
        if grouping:
            continue
        if nxt == "(" or nxt in ("by", "without"):
            assert text in FUNCTIONS, f"unknown function {text} in {expr!r}"
            continue
        names.add(text)
    assert not stack, f"unbalanced {expr!r}"
    return names


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_the_parser_finds_metric_names_and_skips_labels_and_functions() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, stream) (rate(a_bucket{stream="x", le!="1"}[5m]))) / b'
    assert metric_names(expr) == {"a_bucket", "b"}
    assert metric_names("max(c) by (pod)") == {"c"}


async def scrape(url: str) -> set[str]:
    """The sample names a /metrics endpoint exports (suffixes included: _total, _bucket, ...)."""
    async with httpx.AsyncClient() as http:
        r = await http.get(url)
    assert r.status_code == 200, r.text
    return {s.name for family in text_string_to_metric_families(r.text) for s in family.samples}


async def test_every_dashboard_query_names_a_metric_its_process_exports(stack: Stack) -> None:
    worker_port, flusher_port = free_port(), free_port()
    stack.start("ingest.api")
    stack.start("gateway")
    stack.start("ingest.worker", worker_metrics_port=worker_port)
    stack.start("ingest.flusher", flusher_metrics_port=flusher_port)
    exported = {
        "ingest.api": await scrape(f"{stack.ingest_url}/metrics"),
        "gateway": await scrape(f"{stack.gateway_url}/metrics"),
        "ingest.worker": await scrape(f"http://127.0.0.1:{worker_port}/metrics"),
        "ingest.flusher": await scrape(f"http://127.0.0.1:{flusher_port}/metrics"),
    }
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        for name in names:
            process = next((p for prefix, p in EXPORTERS.items() if name.startswith(prefix)), None)
            assert process is not None, f"{name}: no process is expected to export it"
            assert name in exported[process], f"{name} (in {expr!r}) is not exported by {process}"
        used |= names
    # What the issue asks the dashboard to show is there.
    for needed in (
        "scorecast_gateway_connections", "scorecast_gateway_broadcast_seconds_bucket",
        "scorecast_stream_backlog", "scorecast_stream_consumer_lag",
        "scorecast_stream_processing_seconds_bucket", "scorecast_stream_dead_lettered_total",
        "scorecast_flush_seconds_bucket", "scorecast_flush_dirty_keys", "scorecast_score_writes_total",
        "scorecast_auth_failures_total", "scorecast_flags_raised_total",
    ):  # fmt: skip
        assert needed in used, f"the dashboard does not show {needed}"
