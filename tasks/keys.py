"""Every Redis key, stream, job function name and retention the parts share, in one place.

Producers, the orchestrator and the agent meet only through these names; other languages
follow them as documented in the README.
"""

from __future__ import annotations

# arq's own names (its defaults, so `arq orchestrator.WorkerSettings` needs no queue setting).
QUEUE_NAME = "arq:queue"
ARQ_JOB_PREFIX = "arq:job:"
ARQ_RESULT_PREFIX = "arq:result:"
WORKER_HEALTH_CHECK = QUEUE_NAME + ":health-check"
"""arq's health-check key: every orchestrator worker refreshes it each
WORKER_HEALTH_CHECK_INTERVAL_S, with an expiry one second longer, and deletes it when it
stops."""
WORKER_HEALTH_CHECK_INTERVAL_S = 10

# Job function names: the `f` field of a job.
DISPATCH_AGENT = "dispatch_agent"
END_SESSION = "end_session"
SESSION_REPORT = "session_report"
REJECT_MALFORMED_JOB = "reject_malformed_job"
CONFIRM_ASSIGNMENT = "confirm_assignment"
RECONCILE_SESSIONS = "reconcile_sessions"
DISPATCH_FROM_LINE = "dispatch_from_line"
MOVE_LINE = "move_line"
AGENT_EXITED = "agent_exited"
WORKER_GONE = "worker_gone"

PREFIX = "lkd:"
RESULTS_STREAM = PREFIX + "results"
"""Terminal session reports, one entry per session (README: "Results stream")."""
DEAD_LETTER_STREAM = PREFIX + "dead-letters"
"""Failed dispatches and rejected jobs, with their reason and what is needed to replay them."""
DUPLICATE_REPORTS_STREAM = PREFIX + "duplicate-reports"
"""Second and later reports for a session that already has its terminal report."""
DEAD_LETTERS_REPLAYED = PREFIX + "dead-letters:replayed"
"""Hash: dead-letter entry id -> the event id it was replayed as."""
METRICS = PREFIX + "metrics"
"""Hash: the workers' counters and histogram buckets, summed across workers (/metrics)."""

LIVE_SESSIONS = PREFIX + "sessions:live"
"""Sorted set of session ids not yet terminal, scored by claim time (unix ms)."""
RECONCILE_DUE = PREFIX + "sessions:reconcile-due"
"""Sorted set of live session ids, scored by when reconciliation next looks at each (unix ms)."""
CLAIM_SWEEP_CURSOR = PREFIX + "reconcile:claim-sweep-cursor"
"""Where reconciliation's sweep for orphan room claims goes on (a SCAN cursor)."""
RECENT_SESSIONS = PREFIX + "sessions:recent"
"""Sorted set of every session id, scored by creation time (unix ms), trimmed by retention."""

RESULTS_STREAM_MAXLEN = 100_000
DEAD_LETTER_STREAM_MAXLEN = 100_000


def dispatch_job_id(event_id: str) -> str:
    """The arq job id of an event's dispatch: one job per event."""
    return f"dispatch:{event_id}"


def report_job_id(session_id: str, nonce: str) -> str:
    """Every report is its own job, so a second report for a session reaches the
    orchestrator and is recorded as a duplicate rather than vanishing."""
    return f"session_report:{session_id}:{nonce}"


def confirm_job_id(session_id: str, dispatch_id: str) -> str:
    """The assignment check of one dispatch: one per dispatch."""
    return f"confirm:{session_id}:{dispatch_id}"


LINE_DISPATCH_JOB_PREFIX = "line-dispatch:"


def line_dispatch_job_id(session_id: str, admission: int) -> str:
    """The dispatch of a session let out of its waiting line, for its `admission`-th time
    (a session LiveKit dropped goes back to the line, and out again)."""
    return f"{LINE_DISPATCH_JOB_PREFIX}{session_id}:{admission}"


def agent_exited_job_id(session_id: str, job_id: str) -> str:
    """An agent worker's note that the job process of a session exited without its report:
    one per LiveKit job."""
    return f"agent_exited:{session_id}:{job_id}"


def worker_gone_job_id(instance: str, last_beat_ms: int) -> str:
    """An agent worker whose beat went silent: one per worker and last beat, however many
    orchestrator workers notice it."""
    return f"worker_gone:{instance}:{last_beat_ms}"


def replacement_dispatch_job_id(session_id: str) -> str:
    """The dispatch of a session that replaces one whose agent died (failover)."""
    return f"{LINE_DISPATCH_JOB_PREFIX}{session_id}:replacement"


def move_line_job_id(nonce: str) -> str:
    """A worker joined or grew: each time its own job (arq keeps a job's result an hour)."""
    return f"move_line:{nonce}"


def event_key(event_id: str) -> str:
    """Event idempotency record; outlives arq's result so a late replay is still recognised."""
    return f"{PREFIX}event:{event_id}"


def room_claim_key(room: str) -> str:
    """Which session holds a room; exists exactly while that session is live."""
    return f"{PREFIX}room:{room}"


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def session_payload_key(session_id: str) -> str:
    """The job metadata of a live session, kept to dispatch it again; deleted when it ends."""
    return f"{PREFIX}session-payload:{session_id}"


def room_sessions_key(room: str) -> str:
    """Sorted set of a room's session ids by creation time, for look-ups by room."""
    return f"{PREFIX}room-sessions:{room}"


AGENT_HEARTBEAT_INTERVAL_S = 5.0
"""How often a running agent session refreshes its heartbeat."""


def agent_heartbeat_key(session_id: str) -> str:
    """Unix ms of the agent's last sign of life for a session; its absence past the grace
    period (after it was once seen) means the agent died without reporting."""
    return f"{PREFIX}agent-heartbeat:{session_id}"


def agent_job_key(session_id: str) -> str:
    """JSON {dispatch_id, job_id, worker_id}: the job an agent took for a session, written
    with its first heartbeat; it confirms the dispatch's assignment without asking LiveKit."""
    return f"{PREFIX}agent-job:{session_id}"


def report_filed_key(session_id: str) -> str:
    """Set once the session's terminal report is on the results stream."""
    return f"{PREFIX}report-filed:{session_id}"


def parts_key(session_id: str) -> str:
    """Set of the part sessions of a session whose agents take a job per publisher
    (AGENT_JOB_TYPE=publisher): one per job."""
    return f"{PREFIX}parts:{session_id}"


def checkpoint_key(session_id: str) -> str:
    """JSON: the last checkpoint a session's handler saved (`SessionContext.checkpoint`), for
    the session that replaces it should its agent die."""
    return f"{PREFIX}checkpoint:{session_id}"


def session_lease_key(session_id: str) -> str:
    """Which run of a job may create or replace the session's dispatch right now (a token,
    with an expiry): two runs of one step never dispatch side by side."""
    return f"{PREFIX}session-lease:{session_id}"


AGENT_WORKERS = PREFIX + "agent-workers"
"""Sorted set of agent worker instances, scored by their last heartbeat (unix ms)."""
AGENT_WORKER_HEARTBEAT_INTERVAL_S = 2.0
"""How often an agent worker refreshes its record."""


def agent_worker_key(instance: str) -> str:
    """JSON record of one agent worker process: its agent_name, LiveKit worker id, session
    limit and the sessions it holds, starting or running (tasks.heartbeat.WorkerRecord)."""
    return f"{PREFIX}agent-worker:{instance}"


def stray_agent_key(room: str, room_sid: str) -> str:
    """Set (for a day) once the webhook receiver has said that `room` (this instance of it:
    a room name used again is a new room) got an agent nobody dispatched through us, so that
    it says so once."""
    return f"{PREFIX}stray-agent:{room}:{room_sid}"


STRAY_AGENT_NOTICE_S = 24 * 3600

# The waiting line (README: "When the agents are full"): per agent_name, what its fleet takes,
# the sessions holding a slot of it, and those waiting for one.
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
LINE_NAMES = PREFIX + "lines"
"""Set of the agent names whose capacity is known (a worker of ours or a static limit)."""
LINE_SEQ = PREFIX + "line-seq"
"""Counter that orders arrivals in a line (first come, first served within a priority)."""


def fleet_key(agent_name: str) -> str:
    """Hash: agent worker instance -> "<beat unix ms> <slots it offers>", written with each
    worker heartbeat; the name's capacity is the sum over workers that beat recently."""
    return f"{PREFIX}fleet:{agent_name}"


def slots_key(agent_name: str) -> str:
    """Sorted set of the live sessions holding one of the agent name's slots (dispatched or
    about to be), scored by when they took it (unix ms)."""
    return f"{PREFIX}slots:{agent_name}"


def line_key(agent_name: str) -> str:
    """Sorted set of the sessions waiting for a slot: lowest score first (higher priority,
    then earlier arrival)."""
    return f"{PREFIX}line:{agent_name}"


def durations_key(agent_name: str) -> str:
    """List of the agent name's recent completed session durations (s), newest first, for
    the line's estimated wait."""
    return f"{PREFIX}durations:{agent_name}"


RECENT_DURATIONS_KEPT = 100

REDIS_OUTAGE = PREFIX + "redis-outage"
"""Hash {started_ms, ended_ms} of the last Redis outage an orchestrator worker rode out:
heartbeats could not be written then, so their silence is not read as death."""
