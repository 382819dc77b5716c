"""The operator's command line: `orchestrator <command>` or `python -m orchestrator <command>`.

Kept free of imports at package level: the demo's agent-side handler lives in this package
and is loaded inside agent processes.
"""

from __future__ import annotations
