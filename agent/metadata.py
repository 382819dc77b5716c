"""Reading `ctx.job.metadata`: the JobMetadata the orchestrator sends, or a clear reason why not.

Messages name the problem (which field, what was expected) and never quote the values: job
metadata may carry personal data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from livekit.protocol.agent import Job, JobType
from pydantic import ValidationError

from agent.errors import InvalidMetadataError
from tasks.models import JobMetadata
from tasks.parts import part_id
from tasks.validation import problems

MAX_ID_CHARS = 200
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")


def parse_job_metadata(raw: str) -> JobMetadata:
    """The job's JobMetadata; raises InvalidMetadataError saying what is wrong."""
    if not raw.strip():
        raise InvalidMetadataError(
            "job metadata is empty: this job was not dispatched by the orchestrator "
            "(expected a JSON object of type 'lkd.job')"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidMetadataError(
            f"job metadata is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidMetadataError(
            f"job metadata must be a JSON object of type 'lkd.job', got a JSON {_json_type(data)}"
        )
    try:
        return JobMetadata.model_validate(data)
    except ValidationError as exc:
        raise InvalidMetadataError(
            "job metadata is not an 'lkd.job' version 1 object: " + problems(exc)
        ) from None


@dataclass(frozen=True)
class SalvagedIds:
    session_id: str | None = None
    event_id: str | None = None


def salvage_ids(raw: str) -> SalvagedIds:
    """The session and event ids in metadata that is otherwise unusable, when they look sane,
    so a failed report can still be matched to its session."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return SalvagedIds()
    if not isinstance(data, dict):
        return SalvagedIds()
    return SalvagedIds(_safe_id(data.get("session_id")), _safe_id(data.get("event_id")))


def job_session_id(job: Job) -> str | None:
    """The session a LiveKit job runs: the one its metadata names or, for a job per publisher
    (JT_PUBLISHER, AGENT_JOB_TYPE=publisher), that session's part for this job."""
    session_id = salvage_ids(job.metadata).session_id
    if session_id and job.type == JobType.JT_PUBLISHER:
        return part_id(session_id, job.id)
    return session_id


def _safe_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and _SAFE_ID.match(value):
        return value
    return None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"
