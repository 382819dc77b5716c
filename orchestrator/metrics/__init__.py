"""Prometheus metrics of the orchestrator (exposed by the HTTP service's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_RECEIVED = Counter("lkd_events_received_total", "Dispatch events taken off the queue")
DISPATCH_OUTCOMES = Counter(
    "lkd_dispatch_outcomes_total", "Dispatch events by outcome", ["outcome"]
)
TIME_TO_DISPATCH = Histogram(
    "lkd_time_to_dispatch_seconds",
    "From enqueue to LiveKit accepting CreateDispatch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LIVEKIT_CALLS = Histogram(
    "lkd_livekit_call_seconds",
    "LiveKit API call latency by method and result code",
    ["method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WAIT_SECONDS = Histogram(
    "lkd_wait_seconds",
    "How long sessions let out of a waiting line waited for a free agent slot",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
REPORTS = Counter("lkd_reports_total", "Terminal session reports filed, by status", ["status"])
DUPLICATE_REPORTS = Counter("lkd_duplicate_reports_total", "Reports for already-reported sessions")
REJECTED_JOBS = Counter("lkd_rejected_jobs_total", "Jobs rejected as malformed or invalid")
AGENT_DEATHS = Counter(
    "lkd_agent_deaths_total",
    "Sessions whose agent died without its report, by what became of them: replaced (a new "
    "agent joined), lost (nobody in the room, restart_policy never, ended by request or "
    "failover off) or failed (the restart budget was spent)",
    ["outcome"],
)
RESTART_SECONDS = Histogram(
    "lkd_restart_seconds",
    "From a dead agent's replacement decided to LiveKit accepting its CreateDispatch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
