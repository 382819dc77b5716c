"""When a job tries again, and when it gives up: decided here for every job, so that a first
dispatch, a dispatch made again by the assignment check, and reconciliation treat LiveKit's
errors and an unreachable Redis alike.

- A LiveKit error that may pass (5xx, timeouts, no connection) is tried again with backoff, up
  to `Settings.dispatch_max_tries` tries of the job; a permanent one is not.
- A job that meets an unreachable Redis is deferred (arq's Retry) until Redis is back: its
  worker rides the outage out (`orchestrator.store.connections`).
- arq allows each job a few more tries than that (`TRIES_HEADROOM`), so that the tries a killed
  worker costs never leave a step unfinished: a step on its last try concludes (it fails the
  session with a dead letter) instead of leaving arq to drop it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from arq import Retry
from arq.typing import WorkerCoroutine

from orchestrator.errors import LiveKitError
from orchestrator.jobs.context import of
from orchestrator.store.connections import UNREACHABLE
from orchestrator.store.sessions import Lease

log = structlog.get_logger("orchestrator.jobs.retries")

TRIES_HEADROOM = 5
"""arq tries of a job beyond `dispatch_max_tries`: for the tries lost to killed workers."""
LEASE_MARGIN_S = 2.0
"""A lease outlives its job's timeout by this much (arq cancels a job at its timeout)."""
TIMEOUT_MARGIN_S = 1.0
"""A job gives up this long before arq's timeout (`Settings.job_timeout_s`) would fail it."""
LEASE_POLL_S = 0.05
"""How often a run waiting for another run's lease asks again."""
STARTED = "lkd_started"
"""ctx key: when this run of the job started (time.monotonic())."""


def retry_delay(ctx: dict[str, Any], exc: LiveKitError) -> float | None:
    """How long to wait before trying again after `exc`; None when the job must give up now
    (the error is permanent, or this was its last try)."""
    c = of(ctx)
    job_try: int = ctx["job_try"]
    if exc.retryable and job_try < c.settings.dispatch_max_tries:
        return c.backoff_s(job_try)
    return None


def give_up_reason(ctx: dict[str, Any], exc: LiveKitError) -> str:
    """What a session that failed on `exc` reads as its error."""
    if exc.retryable:
        return f"gave up after {ctx['job_try']} tries: {exc}"
    return str(exc)


def retry_or_reason(ctx: dict[str, Any], exc: LiveKitError) -> str:
    """Raise arq's Retry when the job should try again after `exc`; otherwise the reason the
    step fails with."""
    delay = retry_delay(ctx, exc)
    if delay is not None:
        log.warning("LiveKit error, will retry", error=str(exc), retry_in_s=round(delay, 3))
        raise Retry(defer=delay)
    return give_up_reason(ctx, exc)


def job_lease(ctx: dict[str, Any]) -> Lease:
    """This run's lease token: unique per run (arq counts tries from the first)."""
    timeout_s = of(ctx).settings.job_timeout_s
    return Lease(
        token=f"{ctx['job_id']}#{ctx['job_try']}", ttl_ms=int((timeout_s + LEASE_MARGIN_S) * 1000)
    )


async def wait_for_lease(ctx: dict[str, Any], busy_ms: int) -> None:
    """Another run of this step holds the session's lease (it dies or gives it up within
    `busy_ms`): wait a moment before the caller asks again. When this run's own time would
    run out first, it is deferred instead (arq's Retry) until the lease has expired."""
    deadline = ctx[STARTED] + of(ctx).settings.job_timeout_s - 2 * TIMEOUT_MARGIN_S
    if time.monotonic() + LEASE_POLL_S > deadline:
        raise Retry(defer=max(busy_ms, 0) / 1000 + LEASE_POLL_S)
    await asyncio.sleep(LEASE_POLL_S)


def as_arq_job(job: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    """Wrap an arq job function: its start is noted (`wait_for_lease` reads it), and when
    Redis is unreachable mid-job, or the job runs out of time, it is run again (once Redis
    answers) instead of failing: arq would not retry a job it timed out. Each step of a job is
    safe to run again, which is what lets this be done for all of them.

    The deferral is arq's Retry without a delay: arq's worker waits for Redis to record it
    (`orchestrator.store.connections`), and the job is due again at once. A delay would move the
    job in arq's queue, and a run that meets the outage must not move a job that another run
    has finished meanwhile (an outage longer than arq's in-progress mark lets a second run
    start): arq would queue it again, as a job whose data is gone."""

    @functools.wraps(job)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        ctx[STARTED] = time.monotonic()
        budget_s = max(of(ctx).settings.job_timeout_s - TIMEOUT_MARGIN_S, TIMEOUT_MARGIN_S)
        try:
            return await asyncio.wait_for(job(ctx, *args, **kwargs), budget_s)
        except UNREACHABLE as exc:  # TimeoutError included: the step ran out of time
            log.info(
                "job deferred: Redis unreachable or the job ran out of time",
                job_id=ctx["job_id"],
                job_try=ctx["job_try"],
                error=type(exc).__name__,
            )
            raise Retry() from exc

    return cast(WorkerCoroutine, run)
