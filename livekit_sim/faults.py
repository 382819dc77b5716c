"""Fault injection, per endpoint, for tests and benchmarks.

An endpoint is a Twirp method ("AgentDispatchService/CreateDispatch", "RoomService/ListRooms",
...) or "*" for all of them. Rules are read on every call, so a test can change them mid-run.
Every random decision is drawn from `Faults.rng`: after `faults.seed(n)`, the same sequence of
calls and job requests gets the same faults. Every fault injected is counted in
`Faults.injected` by kind (`FAULT_KINDS`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

# What `Faults.injected` counts, one entry per fault injected:
# error (error_rate), lost_answer (lost_answer_rate), delayed (response_delay_ms applied),
# dropped (drop_rate), unoffered (unoffered_rate), workers_never_answer (a job request
# that timed out because of it).
FAULT_KINDS = ("error", "lost_answer", "delayed", "dropped", "unoffered", "workers_never_answer")


@dataclass
class TwirpFault:
    """What to do to calls of one endpoint. Rates are shares of calls, 0..1.

    In order: `latency_ms` before anything; `drop_rate` closes the connection with no answer;
    `error_rate` answers `error_code` without handling the call. A call that was handled and
    took effect then waits `response_delay_ms` (for a share `response_delay_rate` of them),
    and `lost_answer_rate` of them are answered `error_code`/`error_msg` instead of their
    result, as when the answer is lost and a proxy answers 503.
    """

    latency_ms: float = 0.0  # before the call is handled
    response_delay_ms: float = 0.0  # after the call took effect, before its answer
    response_delay_rate: float = 1.0  # share of calls that took effect whose answer is delayed
    error_rate: float = 0.0  # share of calls answered with `error_code`, not handled
    error_code: str = "unavailable"
    error_msg: str = "injected fault"
    drop_rate: float = 0.0  # share of calls whose connection is closed without an answer
    lost_answer_rate: float = 0.0  # share of calls that take effect but get `error_code`

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_rate"):
                check_rate(f.name, getattr(self, f.name))


@dataclass
class Faults:
    """Every fault switch of one sim, read on every call and job request, and what they did."""

    twirp: dict[str, TwirpFault] = field(default_factory=dict)
    # Workers get no AvailabilityRequest and the server waits out its timeout, as when a
    # worker's request handler never answers: the job is dropped.
    workers_never_answer: bool = False
    # Share of dispatches made by CreateDispatch whose JT_ROOM job is never offered to a
    # worker, as when none is available: the dispatch stays listed with `jobs: []` forever.
    unoffered_rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)  # worker selection draws too
    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))

    def for_endpoint(self, endpoint: str) -> TwirpFault | None:
        return self.twirp.get(endpoint) or self.twirp.get("*")

    def set(self, endpoint: str, **fault: object) -> TwirpFault:
        """Replace the rule of `endpoint` with a TwirpFault of these fields.

        Raises TypeError for an unknown field and ValueError for a rate outside 0..1.
        """
        rule = TwirpFault(**fault)  # type: ignore[arg-type]
        self.twirp[endpoint] = rule
        return rule

    def clear(self) -> None:
        """Remove every rule and switch (the counts in `injected` and the rng stay)."""
        self.twirp.clear()
        self.workers_never_answer = False
        self.unoffered_rate = 0.0

    def seed(self, n: int | None) -> None:
        """Seed `rng`: from here, the same calls in the same order get the same faults."""
        self.rng.seed(n)

    def roll(self, rate: float) -> bool:
        """True for a share `rate` of rolls; a rate of 0 or 1 draws nothing from `rng`."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        return self.rng.random() < rate

    def count(self, kind: str) -> None:
        """One more fault of `kind` (one of FAULT_KINDS) was injected."""
        self.injected[kind] = self.injected.get(kind, 0) + 1


def check_rate(name: str, rate: object) -> None:
    """ValueError unless `rate` is a number from 0 to 1."""
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"{name} must be a number from 0 to 1, got {rate!r}")
