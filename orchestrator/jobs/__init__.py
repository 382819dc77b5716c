"""The worker's jobs, in the order an event meets them:

1. `dispatch.dispatch_agent`: one event, at most one agent dispatch per room.
2. `assignment.confirm_assignment`: the dispatch reached a worker that runs it; otherwise
   dispatch again, or fail the session with the reason.
3. `reports.session_report`: the agent's report filed on the results stream, the room freed;
   `end_session.end_session`: a producer asks a session to end.
4. `reconcile.reconcile_sessions` (cron): every session ends with exactly one report, whatever
   became of its agent.

`rejections.reject_malformed_job` takes what no job can read. `retries` wraps each job
(tries, timeouts, Redis outages) and `context` is what every job gets.
"""
