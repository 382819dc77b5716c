"""Everything the orchestrator keeps in Redis: the session records and the Lua scripts that
change them (`sessions`, `lua`), the read-only views (`queries`), the dead letters, the
pipelined script connection (`script_pipe`) and how workers meet Redis and its outages
(`connections`)."""
