"""The waiting line's parts that need no Redis: the slots a worker offers, the estimated
wait, and the line dispatch job the scripts write, which must read as any job does."""

from __future__ import annotations

import json

import pytest

from orchestrator.store.line import LineConfig, estimated_wait_s
from tasks.heartbeat import WorkerRecord
from tasks.keys import DISPATCH_FROM_LINE
from tasks.serialization import deserialize

pytestmark = pytest.mark.unit


def record(worker_id: str = "AW_1", *, held: int = 0, full: bool = False) -> WorkerRecord:
    return WorkerRecord(
        instance="AI_1",
        agent_name="support",
        worker_id=worker_id,
        max_sessions=4,
        sessions={f"S_{i}": "running" for i in range(held)},
        full=full,
    )


def test_a_worker_offers_its_limit_once_registered_and_only_what_it_holds_while_full() -> None:
    assert record(worker_id="").offered == 0  # LiveKit could send it nothing yet
    assert record(held=1).offered == 4
    assert record(held=1, full=True).offered == 1  # its CPU gate: no more than it runs
    assert record(held=4, full=True).offered == 4


def test_whether_a_worker_is_full_travels_with_its_record() -> None:
    again = WorkerRecord.from_json(record(held=2, full=True).to_json())
    assert again is not None
    assert again.full is True
    assert again.offered == 2
    older = json.loads(record().to_json())
    del older["full"]  # a worker from before the line
    parsed = WorkerRecord.from_json(json.dumps(older))
    assert parsed is not None
    assert parsed.full is False


def test_the_estimated_wait_is_the_slots_to_free_times_the_typical_session() -> None:
    assert estimated_wait_s(1, 2, [60.0, 30.0, 90.0]) == 30.0  # median 60 s over 2 slots
    assert estimated_wait_s(3, 2, [60.0]) == 90.0
    assert estimated_wait_s(1, 0, [60.0]) is None  # no capacity: nothing tells when
    assert estimated_wait_s(1, 2, []) is None  # no session completed yet


def test_the_line_dispatch_job_the_scripts_write_reads_as_a_job() -> None:
    enabled, statics, timeout_ms, head, middle, tail, _, now = LineConfig({"billing": 3}, 2.5).args(
        1_765_000_000_000
    )
    assert (enabled, json.loads(statics), timeout_ms) == ("1", {"billing": 3}, 2500)
    body = f"{head}S_abc{middle}{now}{tail}".encode()
    job = deserialize(body)
    assert (job["f"], job["a"], job["et"]) == (DISPATCH_FROM_LINE, ["S_abc"], 1_765_000_000_000)
    assert LineConfig({}, 1.0, enabled=False).args(0)[:2] == ["0", ""]
