"""The operator's command line: `orchestrator <command>` or `python -m orchestrator <command>`."""
