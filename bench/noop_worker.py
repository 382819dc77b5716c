"""An arq worker whose only job does nothing but note when it started: arq's own floor, for
bench/dispatch_latency.py to compare the orchestrator against.

Same JSON job format as the orchestrator, read with plain `json.loads` (the orchestrator's
reader also checks each job against its own job functions, which `noop` is not one of), and
arq's CLI logging (one line per job start and end, as `arq orchestrator.WorkerSettings`
logs), so the difference between the two is the dispatch work.

    .venv/bin/python -m bench.noop_worker --redis-url redis://127.0.0.1:6379/0 \
        --poll-delay-s 0.5 --max-jobs 10
"""

from __future__ import annotations

import argparse
import json
import logging.config
import time
from typing import Any

from arq.connections import RedisSettings
from arq.logs import default_log_config
from arq.worker import Worker

from tasks.serialization import serialize

NOOP = "noop"
QUEUE = "bench:noop"


async def noop(ctx: dict[str, Any]) -> int:
    """Start time of the job, unix ns; kept in arq's result at no extra Redis call."""
    return time.time_ns()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--poll-delay-s", type=float, default=0.5)
    parser.add_argument("--max-jobs", type=int, default=10)
    args = parser.parse_args()
    logging.config.dictConfig(default_log_config(verbose=False))
    Worker(
        functions=[noop],
        queue_name=QUEUE,
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        job_serializer=serialize,
        job_deserializer=json.loads,
        poll_delay=args.poll_delay_s,
        max_jobs=args.max_jobs,
        handle_signals=True,
    ).run()


if __name__ == "__main__":
    main()
