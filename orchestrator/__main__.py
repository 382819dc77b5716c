"""`python -m orchestrator <command>`: the command line (`--help` lists the commands)."""

from orchestrator.cli.app import entry_point

entry_point()
