"""The Lua scripts that change session state, each one decision that must be atomic. Their
KEYS and ARGV are listed above each; `SessionStore` (store/sessions.py) is their only caller.
"""

from __future__ import annotations

from orchestrator.store.record import TERMINAL

# The same decision inside scripts: `terminal(status)` for a status string (nil is not).
LUA_TERMINAL = (
    "local function terminal(s) return "
    + " or ".join(f"s == '{status}'" for status in sorted(TERMINAL))
    + " end\n"
)

# KEYS: event, room claim, session, live set, recent set, room sessions, reconcile due set,
#       session lease
# ARGV: session_id, generation, now_ms, event_ttl_s, retention_s, event_id, room, agent_name,
#       enqueued_ms, session key prefix, first reconciliation at (unix ms), dispatch job id,
#       lease token, lease ttl (ms)
# A claim (or the resumption of one by a later try) takes the session's lease: 'busy' when
# another run of the dispatch job holds it.
CLAIM = (
    LUA_TERMINAL
    + """
local sid, gen, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ev_sid = redis.call('HGET', KEYS[1], 'session_id')
if ev_sid then
  local ev_gen = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
  if ev_sid == sid then
    local status = redis.call('HGET', KEYS[3], 'status')
    if status ~= 'claimed' then return {'duplicate_event', ev_sid} end
    local holder = redis.call('GET', KEYS[8])
    if holder and holder ~= ARGV[13] then return {'busy', sid, redis.call('PTTL', KEYS[8])} end
    redis.call('SET', KEYS[8], ARGV[13], 'PX', ARGV[14])
    return {'resume', sid}
  end
  if ev_gen >= gen then return {'duplicate_event', ev_sid} end
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= sid then
  local hstatus = redis.call('HGET', ARGV[10] .. holder, 'status')
  if hstatus and not terminal(hstatus) then
    redis.call('HSET', KEYS[1], 'session_id', holder, 'generation', gen,
               'outcome', 'deduplicated', 'at', now)
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    return {'deduplicated', holder}
  end
end
redis.call('SET', KEYS[2], sid)
redis.call('HSET', KEYS[1], 'session_id', sid, 'generation', gen, 'outcome', 'claimed', 'at', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[3], 'session_id', sid, 'event_id', ARGV[6], 'room', ARGV[7],
           'agent_name', ARGV[8], 'generation', gen, 'status', 'claimed',
           'enqueued_at', ARGV[9], 'claimed_at', now, 'attempts', 0, 'dispatch_job', ARGV[12])
redis.call('PERSIST', KEYS[3])
redis.call('SET', KEYS[8], ARGV[13], 'PX', ARGV[14])
redis.call('ZADD', KEYS[4], now, sid)
redis.call('ZADD', KEYS[5], now, sid)
redis.call('ZADD', KEYS[6], now, sid)
redis.call('EXPIRE', KEYS[6], ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[11], sid)
return {'claimed', sid}
"""
)

# KEYS: report filed, results stream, session, live set, room claim, session payload,
#       reconcile due set, session lease
# ARGV: session_id, status, report_json, event_id, room, retention_s, maxlen, report digest,
#       then field pairs. Answers 1 (filed), 0 (the session has another report), 2 (this same
#       report is filed already: its job ran again).
FILE_REPORT = """
if not redis.call('SET', KEYS[1], ARGV[8], 'NX', 'EX', ARGV[6]) then
  if redis.call('GET', KEYS[1]) == ARGV[8] then return 2 end
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'session_id', ARGV[1],
           'event_id', ARGV[4], 'room', ARGV[5], 'status', ARGV[2], 'report', ARGV[3])
redis.call('HSET', KEYS[3], 'session_id', ARGV[1], 'event_id', ARGV[4], 'room', ARGV[5],
           'status', ARGV[2])
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
redis.call('DEL', KEYS[6], KEYS[8])
return 1
"""

# KEYS: session, event, payload, check's arq job key, its arq result key, arq queue, lease
# ARGV: dispatch_id, now_ms, payload, retention_s, check job id, check job body, check due ms,
#       check job ttl ms, replaced dispatch id ('' for a session's first), lease token.
#       Records the dispatch and queues its assignment check in one step (as arq's
#       enqueue_job would: not when the job or its result already exists), only while the
#       session still waits for it: `claimed` for a first dispatch, `dispatched` with the
#       replaced one for the next. Releases the caller's lease.
MARK_DISPATCHED = """
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[9] == '' then
  if status ~= 'claimed' then return 0 end
elseif status ~= 'dispatched' or redis.call('HGET', KEYS[1], 'dispatch_id') ~= ARGV[9] then
  return 0
end
if redis.call('GET', KEYS[7]) == ARGV[10] then redis.call('DEL', KEYS[7]) end
redis.call('HSET', KEYS[1], 'status', 'dispatched', 'dispatch_id', ARGV[1],
           'dispatched_at', ARGV[2], 'confirm_job', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[2], 'outcome', 'dispatched')
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
if redis.call('EXISTS', KEYS[4], KEYS[5]) == 0 then
  redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[8])
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[5])
end
return 1
"""

# KEYS: session; ARGV: expected statuses joined by ',', expected dispatch id ('' any), then
# field pairs. Updates only a session in one of the expected states (and with that dispatch),
# so a late step never overwrites a terminal state or a newer dispatch.
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return 0
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'dispatch_id') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: session, lease; ARGV: token, ttl (ms), expected status, expected dispatch id ('' any).
# The session's lease for a step that may dispatch: {'ok'}, {'busy', ms until it expires}
# (another run holds it) or {'moved'} (the session is no longer as the step found it).
LEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[3] then return {'moved'} end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'dispatch_id') ~= ARGV[4] then
  return {'moved'}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy', redis.call('PTTL', KEYS[2])} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'ok'}
"""

# KEYS: lease; ARGV: token. Gives the lease up if the caller still holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: n session keys, then their n agent heartbeat keys. Each session's fields (flat, empty
# when gone) and its heartbeat (nil when none), for a reconciliation page in one step.
READ_SESSIONS = """
local n, out = #KEYS / 2, {}
for i = 1, n do
  out[i] = {redis.call('HGETALL', KEYS[i]), redis.call('GET', KEYS[n + i])}
end
return out
"""

# KEYS: room claims; ARGV: session key prefix. Frees each claim whose session is terminal or
# gone (a crash between steps); the number freed.
FREE_ORPHAN_CLAIMS = (
    LUA_TERMINAL
    + """
local freed = 0
for _, claim in ipairs(KEYS) do
  local holder = redis.call('GET', claim)
  if holder then
    local status = redis.call('HGET', ARGV[1] .. holder, 'status')
    if not status or terminal(status) then
      redis.call('DEL', claim)
      freed = freed + 1
    end
  end
end
return freed
"""
)
