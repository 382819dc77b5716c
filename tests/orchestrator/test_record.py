"""The session record: parsed once from its Redis hash, one status vocabulary, one read path."""

from __future__ import annotations

import dataclasses

import pytest
from arq import ArqRedis

from orchestrator.http.schemas import SessionView
from orchestrator.store import lua, queries
from orchestrator.store.record import LIVE, TERMINAL, Session, SessionStatus
from orchestrator.store.sessions import Lease, SessionStore

pytestmark = pytest.mark.integration


def test_a_record_is_parsed_once_with_its_types() -> None:
    session = Session.parse(
        {
            b"session_id": b"S_1", b"status": b"dispatched", b"room": b"r1",
            b"agent_name": b"support-agent", b"attempts": b"2", b"claimed_at": b"1000",
            b"dispatched_at": b"1250", b"enqueued_at": b"900", b"last_error": b"",
            b"a_field_of_a_later_version": b"x",
        }
    )  # fmt: skip
    assert session == Session(
        session_id="S_1", status=SessionStatus.DISPATCHED, room="r1",
        agent_name="support-agent", attempts=2, claimed_at=1000, dispatched_at=1250,
        enqueued_at=900,
    )  # fmt: skip
    assert session.live
    assert not session.terminal
    view = session.view(now_ms=3000)
    assert view["age_s"] == 2.0
    assert view["time_to_dispatch_ms"] == 350
    assert "last_error" not in view  # empty is absent


def test_what_is_not_a_session_record_parses_to_none() -> None:
    assert Session.parse({}) is None
    assert Session.parse({"session_id": "S_1", "status": "sleeping"}) is None
    assert Session.parse({"status": "claimed"}) is None


def test_one_status_vocabulary() -> None:
    assert set(SessionStatus) == LIVE | TERMINAL
    assert not LIVE & TERMINAL
    assert all(f"s == '{status}'" in lua.LUA_TERMINAL for status in TERMINAL)
    assert not any(f"'{status}'" in lua.LUA_TERMINAL for status in LIVE)


def test_the_api_answers_every_field_of_the_record() -> None:
    record = {field.name for field in dataclasses.fields(Session)}
    assert record <= set(SessionView.model_fields)


async def test_live_sessions_are_read_a_page_at_a_time(arq_redis: ArqRedis) -> None:
    store = SessionStore(arq_redis, retention_s=60, event_retention_s=60)
    try:
        for i in range(5):
            claim = await store.claim(
                session_id=f"S_{i}", generation=0, event_id=f"e-{i}", room=f"r-{i}",
                agent_name="a", enqueued_ms=0, dispatch_job="-", lease=Lease(f"t{i}", 60_000),
            )  # fmt: skip
            assert claim.kind == "claimed"
        page, total = await queries.live_sessions(arq_redis, limit=2)
        assert (len(page), total) == (2, 5)
        assert all(s.status == SessionStatus.CLAIMED for s in page)
        assert (await store.find_live(room="r-3")) == await store.get("S_3")
        assert await store.find_live(room="r-unknown") is None
        assert await store.find_live(session_id="S_unknown") is None
    finally:
        await store.aclose()


async def test_the_dashboards_chart_reads_when_each_recent_session_was_dispatched(
    arq_redis: ArqRedis,
) -> None:
    store = SessionStore(arq_redis, retention_s=60, event_retention_s=60)
    try:
        for i in range(4):
            lease = Lease(f"t{i}", 60_000)
            await store.claim(
                session_id=f"S_{i}", generation=0, event_id=f"e-{i}", room=f"r-{i}",
                agent_name="a", enqueued_ms=1_000 * i, dispatch_job="-", lease=lease,
            )  # fmt: skip
            if i != 2:  # S_2 is still waiting for its dispatch
                await store.mark_dispatched(
                    f"S_{i}", f"e-{i}", f"AD_{i}", "{}", check_in_s=60, attempt=1, lease=lease
                )
        times = await queries.dispatch_times(arq_redis, since_ms=0, limit=3)  # the newest 3
        assert [t.room for t in times] == ["r-3", "r-1"]
        for t in times:
            session = await store.get(f"S_{t.room.removeprefix('r-')}")
            assert session is not None
            assert (t.at_ms, t.ms) == (
                session.dispatched_at, session.dispatched_at - session.enqueued_at,
            )  # fmt: skip
        newest = await queries.list_sessions(arq_redis, limit=2)
        assert [s.session_id for s in newest] == ["S_3", "S_2"]
        assert [s.session_id for s in await queries.list_sessions(arq_redis, status="claimed")] == [
            "S_2"
        ]
    finally:
        await store.aclose()
