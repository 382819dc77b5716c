"""`orchestrator demo` and the dev-only tools it needs: a private Redis server, the processes
it supervises, the events it sends and the agent-side handler of its sessions. Nothing of the
product imports it.

Kept free of imports at package level: the agent's job processes load `demo.handler`.
"""
