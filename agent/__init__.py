"""The agent: a livekit-agents worker that takes the orchestrator's explicit dispatches, runs
a pluggable session handler per job and always reports back (README: "Writing a session
handler"). Run it with `python -m agent start`.

Importing this package does nothing else: `agent.server` builds the worker, from the
environment, when imported.
"""
