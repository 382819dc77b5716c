"""What a chaos run is judged by, read from outside the product: each event's outcome (its arq
result), the results stream and the duplicate reports set aside, and the sim's own record of
which agent job ran in which room from when to when."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any, get_args

from arq import ArqRedis

from livekit_sim import LiveKitSim
from livekit_sim.job_log import JobRecord
from tasks import keys
from tasks.models import DispatchOutcome, SessionReport

OUTCOMES = frozenset(get_args(DispatchOutcome))


@dataclass
class Figures:
    events: int = 0
    without_outcome: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    two_agents_rooms: int = 0
    sessions: int = 0
    reports: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    """Sessions whose dead agent was replaced (their `lost` report names the replacement)."""
    duplicates: int = 0
    missing: int = 0
    still_live: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def broken(self) -> int:
        """Non-zero when a promise was broken."""
        return int(
            any(
                (
                    self.without_outcome,
                    self.two_agents_rooms,
                    self.duplicates,
                    self.missing,
                    self.still_live,
                )
            )
        )

    def line(self, seed: int) -> str:
        statuses = " ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        faults = ", ".join(f"{k} {v}" for k, v in self.faults.items() if v)
        return (
            f"chaos seed={seed}: events {self.events}, without outcome {self.without_outcome} | "
            f"rooms with two agents at once {self.two_agents_rooms} | "
            f"sessions {self.sessions}, reports {self.reports} ({statuses}; replaced "
            f"{self.replaced}), "
            f"duplicates {self.duplicates}, missing {self.missing}, "
            f"still live {self.still_live} | faults: {faults} | {self.seconds:.0f} s"
        )


async def measure(sim: LiveKitSim, queue: ArqRedis, sent: set[str]) -> Figures:
    figures = Figures(events=len(sent))
    sessions: set[str] = set()
    job_ids = [keys.ARQ_RESULT_PREFIX + keys.dispatch_job_id(e) for e in sorted(sent)]
    outcomes: collections.Counter[str] = collections.Counter()
    for raw in await queue.mget(job_ids):
        result = _outcome(raw)
        if result is None:
            figures.without_outcome += 1
            continue
        outcomes[result["outcome"]] += 1
        if result["outcome"] in ("dispatched", "failed", "withdrawn"):
            sessions.add(str(result.get("session_id", "")))
    figures.outcomes = dict(outcomes)

    reports: dict[str, list[SessionReport]] = collections.defaultdict(list)
    for _, entry in await queue.xrange(keys.RESULTS_STREAM):
        report = SessionReport.model_validate_json(entry[b"report"])
        reports[report.session_id].append(report)
    figures.reports = sum(len(r) for r in reports.values())
    figures.by_status = dict(
        collections.Counter(r.status for found in reports.values() for r in found)
    )
    figures.replaced = sum(1 for found in reports.values() for r in found if r.replaced_by)
    figures.duplicates = await queue.xlen(keys.DUPLICATE_REPORTS_STREAM) + sum(
        len(found) - 1 for found in reports.values()
    )

    jobs = list(sim.job_log)
    sessions |= {sid for job in jobs if (sid := _session_of(job))}
    sessions |= set(reports)
    sessions.discard("")
    figures.sessions = len(sessions)
    figures.missing = len(sessions - set(reports))
    figures.still_live = await queue.zcard(keys.LIVE_SESSIONS)
    figures.two_agents_rooms = rooms_with_two_agents(jobs, reports)
    figures.faults = {
        "create 503": sim.faults.injected.get("error", 0),
        "answer lost": sim.faults.injected.get("lost_answer", 0),
        "answer late": sim.faults.injected.get("delayed", 0),
        "unoffered": sim.faults.injected.get("unoffered", 0),
    }
    return figures


def rooms_with_two_agents(jobs: list[JobRecord], reports: dict[str, list[SessionReport]]) -> int:
    """Rooms where two agent jobs overlapped. A job is in its room from its assignment until
    the earliest of: its end as LiveKit saw it (the worker's status, a termination), and the
    end its agent reported (it left the room then, before its process wound down)."""
    reported_end: dict[str, int] = {}
    for found in reports.values():
        for report in found:
            if report.source == "agent" and report.job_id:
                reported_end[report.job_id] = int(report.ended_at.timestamp() * 1e9)
    spans: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for job in jobs:
        end = min(job.ended_at_ns or 2**63, reported_end.get(job.job_id, 2**63))
        spans[job.room].append((job.assigned_at_ns, end))
    overlapping = 0
    for intervals in spans.values():
        intervals.sort()
        latest_end = -1
        for start, end in intervals:
            if start < latest_end:
                overlapping += 1
                break
            latest_end = max(latest_end, end)
    return overlapping


def _outcome(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        result = json.loads(raw)
    except ValueError:
        return None
    value = result.get("r") if isinstance(result, dict) and result.get("s") else None
    if isinstance(value, dict) and value.get("outcome") in OUTCOMES:
        return value
    return None


def _session_of(job: JobRecord) -> str | None:
    try:
        value = json.loads(job.metadata).get("session_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
