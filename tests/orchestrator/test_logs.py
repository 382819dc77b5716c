"""A production log line is one JSON object with the step, its level, and the time in UTC."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from orchestrator import logs


class Opaque:
    def __repr__(self) -> str:
        return "<opaque 7>"


def test_a_json_line_carries_the_step_its_level_and_the_utc_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json=True)
    try:
        before = datetime.now(UTC)
        structlog.get_logger("test").info("dispatched", room="r1", tries=2, detail=Opaque())
        after = datetime.now(UTC)
    finally:
        structlog.reset_defaults()
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "dispatched"
    assert entry["level"] == "info"
    assert (entry["room"], entry["tries"], entry["detail"]) == ("r1", 2, "<opaque 7>")
    stamp = entry["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    logged_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - timedelta(microseconds=1) <= logged_at <= after
