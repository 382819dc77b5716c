"""`python -m bench`: run every benchmark script in turn; each prints its own figures."""

from __future__ import annotations

import subprocess
import sys

# Module names under bench/, run in this order.
BENCHMARKS = [
    "bench.sim_rps",
    "bench.protocol_cost",
    "bench.dispatch_latency",
    "bench.time_to_agent",
    "bench.reconcile_pass",
    "bench.overview",
    "bench.waiting_line",
    "bench.failover",
    "bench.chaos",
]


def main() -> int:
    failed = 0
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        failed += subprocess.call([sys.executable, "-m", module]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
