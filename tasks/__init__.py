"""The wire contract shared by producers, the orchestrator and the agent."""

from tasks.connection import create_redis, redis_settings
from tasks.keys import (
    DEAD_LETTER_STREAM,
    DISPATCH_AGENT,
    END_SESSION,
    QUEUE_NAME,
    RESULTS_STREAM,
    SESSION_REPORT,
)
from tasks.models import (
    DispatchRequest,
    EndSessionRequest,
    JobMetadata,
    ParticipantRecord,
    SessionReport,
    session_id_for,
)
from tasks.producer import enqueue_dispatch, enqueue_end_session, enqueue_session_report
from tasks.results import ResultEntry, ResultsConsumer, recent_results
from tasks.serialization import deserialize as job_deserializer
from tasks.serialization import serialize as job_serializer

__all__ = [
    "DEAD_LETTER_STREAM",
    "DISPATCH_AGENT",
    "END_SESSION",
    "QUEUE_NAME",
    "RESULTS_STREAM",
    "SESSION_REPORT",
    "DispatchRequest",
    "EndSessionRequest",
    "JobMetadata",
    "ParticipantRecord",
    "ResultEntry",
    "ResultsConsumer",
    "SessionReport",
    "create_redis",
    "enqueue_dispatch",
    "enqueue_end_session",
    "enqueue_session_report",
    "job_deserializer",
    "job_serializer",
    "recent_results",
    "redis_settings",
    "session_id_for",
]
