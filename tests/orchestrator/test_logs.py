"""A production log line is one JSON object with the step, its level, and the time in UTC,
written as structlog's own JSONRenderer writes it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from orchestrator import logs

pytestmark = pytest.mark.unit


class Opaque:
    def __repr__(self) -> str:
        return "<opaque 7>"


class Custom:
    def __structlog__(self) -> str:
        return "custom form"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The test configures logging as a worker does; afterwards, it is as it was."""
    arq_logger = logging.getLogger("arq.worker")
    level, filters = arq_logger.level, list(arq_logger.filters)
    yield
    structlog.reset_defaults()
    arq_logger.setLevel(level)
    arq_logger.filters = filters


def test_a_json_line_carries_the_step_its_level_and_the_utc_time(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(json=True)  # here: it writes to the stderr capsys put in place
    before = datetime.now(UTC)
    structlog.get_logger("test").info("dispatched", room="r1", tries=2, detail=Opaque())
    after = datetime.now(UTC)
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "dispatched"
    assert entry["level"] == "info"
    assert (entry["room"], entry["tries"], entry["detail"]) == ("r1", 2, "<opaque 7>")
    stamp = entry["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    logged_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - timedelta(microseconds=1) <= logged_at <= after


def test_lines_are_written_as_structlogs_json_renderer_writes_them() -> None:
    event = {"event": "dispatched", "room": "rüm", "n": 1.5, "detail": Opaque(), "c": Custom()}
    ours = logs._render_json(None, "info", dict(event))
    assert ours == structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert json.loads(ours)["c"] == "custom form"
