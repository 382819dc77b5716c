"""The Lua scripts that change session state, each one decision that must be atomic. Their
KEYS and ARGV are listed above each; `SessionStore` (store/sessions.py) is their only caller.
"""

from __future__ import annotations

from orchestrator.store.record import TERMINAL
from tasks import keys

# The same decision inside scripts: `terminal(status)` for a status string (nil is not).
LUA_TERMINAL = (
    "local function terminal(s) return "
    + " or ".join(f"s == '{status}'" for status in sorted(TERMINAL))
    + " end\n"
)

FLEET_FORGET_MS = 3600 * 1000
"""A worker silent this long is forgotten: with no worker left, the name's capacity is no
longer known (its static limit, or none, applies again)."""
PRIORITY_STEP = 2**42
"""A line's score is -priority * PRIORITY_STEP + arrival number: exact in a double for
priorities within keys.PRIORITY_MIN..MAX and 4e12 arrivals."""

# The waiting line, shared by the scripts that take or free a slot. A script reads its line
# configuration from ARGV at `at` (store.line.LineConfig.args): '1' (or '0': the line is off,
# LKD_WAITING_LINE=false), the static limits (JSON object agent_name -> slots, or ''), the
# worker heartbeat timeout (ms), the line dispatch job's body in three parts around its
# session id and enqueue time, that job's expiry (ms), and now (ms).
#
# capacity(agent): what the agent name's fleet takes. The sum of the slots its workers offer
# (tasks.heartbeat.beat_worker), counting those that beat within the timeout only: 0 while
# none does. With no worker of ours seen within FLEET_FORGET_MS, its static limit; without
# one, nil: the capacity is not known, and the name is dispatched without a line, as ever.
#
# move_line(agent): while slots are free, let the head of the line out: it takes a slot, turns
# `claimed` and gets its dispatch job, queued in the same step (so a crash cannot lose it).
LUA_LINE = f"""
local LINE, SLOTS, FLEET, SESSION = '{keys.line_key("")}', '{keys.slots_key("")}',
  '{keys.fleet_key("")}', '{keys.session_key("")}'
local DURATIONS, KEPT = '{keys.durations_key("")}', {keys.RECENT_DURATIONS_KEPT}
local LINE_NAMES, LINE_SEQ = '{keys.LINE_NAMES}', '{keys.LINE_SEQ}'
local JOB, QUEUE, LINE_JOB = '{keys.ARQ_JOB_PREFIX}', '{keys.QUEUE_NAME}',
  '{keys.LINE_DISPATCH_JOB_PREFIX}'
local FORGET_MS, PRIORITY_STEP = {FLEET_FORGET_MS}, {PRIORITY_STEP}
local function line_config(at)
  return {{enabled = ARGV[at] == '1', statics = ARGV[at + 1], timeout = tonumber(ARGV[at + 2]),
          head = ARGV[at + 3], middle = ARGV[at + 4], tail = ARGV[at + 5],
          job_ttl = ARGV[at + 6], now = ARGV[at + 7]}}
end
local function capacity(agent, cfg)
  if not cfg.enabled then return nil end
  local fleet = FLEET .. agent
  local entries = redis.call('HGETALL', fleet)
  if #entries > 0 then
    local now, total, seen = tonumber(cfg.now), 0, false
    for i = 1, #entries, 2 do
      local at, offered = string.match(entries[i + 1], '^(%d+) (%d+)$')
      at = tonumber(at)
      if at and at >= now - FORGET_MS then seen = true end
      if at and at >= now - cfg.timeout then
        total = total + tonumber(offered)
      elseif not at or at < now - FORGET_MS then
        redis.call('HDEL', fleet, entries[i])
      end
    end
    if seen then return total end
  end
  if cfg.statics ~= '' then
    local limit = cjson.decode(cfg.statics)[agent]
    if limit then return tonumber(limit) end
  end
  return nil
end
local function move_line(agent, cfg)
  local cap = capacity(agent, cfg)
  local line, slots = LINE .. agent, SLOTS .. agent
  local admitted = 0
  while cap == nil or redis.call('ZCARD', slots) < cap do
    local head = redis.call('ZRANGE', line, 0, 0)[1]
    if not head then break end
    redis.call('ZREM', line, head)
    local session = SESSION .. head
    if redis.call('HGET', session, 'status') == 'waiting' then
      local job_id = LINE_JOB .. head .. ':' .. redis.call('HINCRBY', session, 'admissions', 1)
      redis.call('HSET', session, 'status', 'claimed', 'admitted_at', cfg.now,
                 'dispatch_job', job_id)
      redis.call('ZADD', slots, cfg.now, head)
      redis.call('SET', JOB .. job_id, cfg.head .. head .. cfg.middle .. cfg.now .. cfg.tail,
                 'PX', cfg.job_ttl)
      redis.call('ZADD', QUEUE, cfg.now, job_id)
      admitted = admitted + 1
    end
  end
  return admitted
end
"""

# KEYS: event, room claim, session, live set, recent set, room sessions, reconcile due set,
#       session lease, session payload
# ARGV: session_id, generation, now_ms, event_ttl_s, retention_s, event_id, room, agent_name,
#       enqueued_ms, session key prefix, first reconciliation at (unix ms), dispatch job id,
#       lease token, lease ttl (ms), priority, expires_at (unix ms, '' for none), job
#       metadata, restart policy ('' for LiveKit's default), then the line configuration
#       (at 19).
# A claim (or the resumption of one by a later try) takes the session's lease: 'busy' when
# another run of the dispatch job holds it. Where the agent name's capacity is known, the
# claim also takes a slot; with none free (or others waiting already), the session waits in
# the line instead, holding its room: {'waiting', id, its place (0: let out at once)}.
CLAIM = (
    LUA_TERMINAL
    + LUA_LINE
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
if ARGV[18] ~= '' then redis.call('HSET', KEYS[3], 'restart_policy', ARGV[18]) end
redis.call('ZADD', KEYS[4], now, sid)
redis.call('ZADD', KEYS[5], now, sid)
redis.call('ZADD', KEYS[6], now, sid)
redis.call('EXPIRE', KEYS[6], ARGV[5])
local agent, check = ARGV[8], ARGV[11]
local cfg = line_config(19)
local cap = capacity(agent, cfg)
if cap then
  redis.call('SADD', LINE_NAMES, agent)
  local priority = tonumber(ARGV[15])
  local score = string.format('%.0f', -priority * PRIORITY_STEP + redis.call('INCR', LINE_SEQ))
  redis.call('HSET', KEYS[3], 'priority', ARGV[15], 'line_score', score)
  if ARGV[16] ~= '' then redis.call('HSET', KEYS[3], 'expires_at', ARGV[16]) end
  local line = LINE .. agent
  if redis.call('EXISTS', line) == 1 or redis.call('ZCARD', SLOTS .. agent) >= cap then
    redis.call('HSET', KEYS[3], 'status', 'waiting')
    redis.call('HSET', KEYS[1], 'outcome', 'waiting')
    if ARGV[17] ~= '' then redis.call('SET', KEYS[9], ARGV[17], 'EX', ARGV[5]) end
    redis.call('ZADD', line, score, sid)
    if ARGV[16] ~= '' and tonumber(ARGV[16]) < tonumber(check) then check = ARGV[16] end
    redis.call('ZADD', KEYS[7], check, sid)
    move_line(agent, cfg)
    local rank = redis.call('ZRANK', line, sid)
    return {'waiting', sid, rank and rank + 1 or 0}
  end
  redis.call('ZADD', SLOTS .. agent, now, sid)
end
redis.call('SET', KEYS[8], ARGV[13], 'PX', ARGV[14])
redis.call('ZADD', KEYS[7], check, sid)
return {'claimed', sid}
"""
)

# KEYS: report filed, results stream, session, live set, room claim, session payload,
#       reconcile due set, session lease
# ARGV: session_id, status, report_json, event_id, room, retention_s, maxlen, report digest,
#       its duration (s, '' unless completed), the line configuration (at 10), then field
#       pairs (from 18). Answers 1 (filed), 0 (the session has another report), 2 (this same
#       report is filed already: its job ran again). A session that held a slot of its agent
#       name frees it, and the line moves in the same step.
FILE_REPORT = (
    LUA_LINE
    + """
if not redis.call('SET', KEYS[1], ARGV[8], 'NX', 'EX', ARGV[6]) then
  if redis.call('GET', KEYS[1]) == ARGV[8] then return 2 end
  return 0
end
local agent = redis.call('HGET', KEYS[3], 'agent_name')
local in_line = redis.call('HEXISTS', KEYS[3], 'line_score') == 1
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'session_id', ARGV[1],
           'event_id', ARGV[4], 'room', ARGV[5], 'status', ARGV[2], 'report', ARGV[3])
redis.call('HSET', KEYS[3], 'session_id', ARGV[1], 'event_id', ARGV[4], 'room', ARGV[5],
           'status', ARGV[2])
for i = 18, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
redis.call('DEL', KEYS[6], KEYS[8])
if in_line and agent then
  redis.call('ZREM', LINE .. agent, ARGV[1])
  if ARGV[9] ~= '' then
    redis.call('LPUSH', DURATIONS .. agent, ARGV[9])
    redis.call('LTRIM', DURATIONS .. agent, 0, KEPT - 1)
  end
  if redis.call('ZREM', SLOTS .. agent, ARGV[1]) == 1 then move_line(agent, line_config(10)) end
end
return 1
"""
)

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

# KEYS: old's report filed, results stream, old session, live set, room claim, old payload,
#       reconcile due set, old lease, new session, new payload, event, recent set, room
#       sessions, the new dispatch job's arq key, arq queue
# ARGV: old id, old's `lost` report, event_id, room, retention_s, maxlen, report digest, new
#       id, now (ms), new job metadata, first reconciliation at (ms), dispatch job id, its
#       body, its ttl (ms), restart number, restart times, then old's field pairs (from 17).
# Failover: the old session's agent died with people in the room. Files its `lost` report and
# puts in the new session, linked both ways, in one step: the room's claim (and the slot of
# its agent name, if it held one) passes from the old to the new, the event points at the
# new, and the new one's dispatch job is queued. However many signals of one death race
# here, only one files the report, so only one replacement is made. Answers as FILE_REPORT
# (1, 0, 2), or -1 when the old session no longer holds the room (nothing done).
REPLACE = """
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return -1 end
if not redis.call('SET', KEYS[1], ARGV[7], 'NX', 'EX', ARGV[5]) then
  if redis.call('GET', KEYS[1]) == ARGV[7] then return 2 end
  return 0
end
local old, new, now = ARGV[1], ARGV[8], ARGV[9]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'session_id', old,
           'event_id', ARGV[3], 'room', ARGV[4], 'status', 'lost', 'report', ARGV[2])
local agent, gen, policy, priority, score = unpack(redis.call('HMGET', KEYS[3], 'agent_name',
  'generation', 'restart_policy', 'priority', 'line_score'))
redis.call('HSET', KEYS[3], 'status', 'lost', 'replaced_by', new)
for i = 17, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], old)
redis.call('ZREM', KEYS[7], old)
redis.call('DEL', KEYS[6], KEYS[8])
redis.call('HSET', KEYS[9], 'session_id', new, 'event_id', ARGV[3], 'room', ARGV[4],
           'agent_name', agent or '', 'generation', gen or '0', 'status', 'claimed',
           'enqueued_at', now, 'claimed_at', now, 'attempts', 0, 'dispatch_job', ARGV[12],
           'replaces', old, 'restart', ARGV[15], 'restarts', ARGV[16])
for name, value in pairs({restart_policy = policy, priority = priority, line_score = score}) do
  if value then redis.call('HSET', KEYS[9], name, value) end
end
redis.call('PERSIST', KEYS[9])
redis.call('SET', KEYS[10], ARGV[10], 'EX', ARGV[5])
redis.call('ZADD', KEYS[4], now, new)
redis.call('ZADD', KEYS[12], now, new)
redis.call('ZADD', KEYS[13], now, new)
redis.call('EXPIRE', KEYS[13], ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[11], new)
redis.call('SET', KEYS[5], new)
if redis.call('HGET', KEYS[11], 'session_id') == old then
  redis.call('HSET', KEYS[11], 'session_id', new)
end
if score and agent and redis.call('ZREM', SLOTS .. agent, old) == 1 then
  redis.call('ZADD', SLOTS .. agent, now, new)
end
redis.call('SET', KEYS[14], ARGV[13], 'PX', ARGV[14])
redis.call('ZADD', KEYS[15], now, ARGV[12])
return 1
"""
REPLACE = f"local SLOTS = '{keys.slots_key('')}'\n" + REPLACE

# KEYS: session, lease; ARGV: dispatch id, lease token, the line configuration (at 3).
# A session of a known capacity whose dispatch no worker took (a worker went full between
# its slot and its dispatch) goes back to its place at the head of the line, gives up its
# slot and the lease, and the line moves. 1 when done; 0 when the session moved on; -1 when
# its agent name has no known capacity (the caller dispatches again, or fails it).
REQUEUE = (
    LUA_LINE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'dispatched'
   or redis.call('HGET', KEYS[1], 'dispatch_id') ~= ARGV[1] then
  return 0
end
local sid = redis.call('HGET', KEYS[1], 'session_id')
local score = redis.call('HGET', KEYS[1], 'line_score')
local agent = redis.call('HGET', KEYS[1], 'agent_name')
local cfg = line_config(3)
if not score or not agent or not capacity(agent, cfg) then return -1 end
redis.call('HSET', KEYS[1], 'status', 'waiting')
redis.call('HDEL', KEYS[1], 'dispatch_id', 'confirm_job')
redis.call('ZREM', SLOTS .. agent, sid)
redis.call('ZADD', LINE .. agent, score, sid)
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
move_line(agent, cfg)
return 1
"""
)

# ARGV: agent_name, '1' to first free the slots of sessions that ended or went back to the
# line (a backstop: every ending frees its slot itself), the line configuration (at 3).
# Lets out of the line as many as slots are free; the number let out.
MOVE_LINE = (
    LUA_TERMINAL
    + LUA_LINE
    + """
local agent = ARGV[1]
if ARGV[2] == '1' then
  for _, sid in ipairs(redis.call('ZRANGE', SLOTS .. agent, 0, -1)) do
    local status = redis.call('HGET', SESSION .. sid, 'status')
    if not status or terminal(status) or status == 'waiting' then
      redis.call('ZREM', SLOTS .. agent, sid)
    end
  end
end
return move_line(agent, line_config(3))
"""
)

# ARGV: agent_name, the line configuration (at 2). {capacity (-1: not known), slots in use,
# sessions waiting}.
LINE_STATE = (
    LUA_LINE
    + """
local agent = ARGV[1]
local cap = capacity(agent, line_config(2))
return {cap or -1, redis.call('ZCARD', SLOTS .. agent), redis.call('ZCARD', LINE .. agent)}
"""
)

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
