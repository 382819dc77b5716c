"""Fault injection, per endpoint, for tests and benchmarks.

An endpoint is a Twirp method ("AgentDispatchService/CreateDispatch", "RoomService/ListRooms",
...) or "*" for all of them. Rules are read on every call, so a test can change them mid-run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class TwirpFault:
    """What to do to calls of one endpoint."""

    latency_ms: float = 0.0  # before the call is handled
    response_delay_ms: float = 0.0  # after the call took effect, before its answer
    error_rate: float = 0.0  # share of calls answered with `error_code`, 0..1
    error_code: str = "unavailable"
    error_msg: str = "injected fault"
    drop_rate: float = 0.0  # share of calls whose connection is closed without an answer


@dataclass
class Faults:
    twirp: dict[str, TwirpFault] = field(default_factory=dict)
    # Workers get no AvailabilityRequest and the server waits out its timeout, as when a
    # worker's request handler never answers: the job is dropped.
    workers_never_answer: bool = False
    rng: random.Random = field(default_factory=random.Random)

    def for_endpoint(self, endpoint: str) -> TwirpFault | None:
        return self.twirp.get(endpoint) or self.twirp.get("*")

    def set(self, endpoint: str, **fault: object) -> TwirpFault:
        rule = TwirpFault(**fault)  # type: ignore[arg-type]
        self.twirp[endpoint] = rule
        return rule

    def clear(self) -> None:
        self.twirp.clear()
        self.workers_never_answer = False

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate
