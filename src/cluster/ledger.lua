-- The cluster ledger: what every node contributes (subscriptions, presence sockets, signed-in
-- sockets, connections) and the cluster-wide totals built from it, changed atomically.
--
-- Each node records its own share in P:n:NODE (field = JSON entry, value = count); the totals
-- live in P:c:APP (channel -> subscriptions), P:u:APP:CH (user -> presence sockets),
-- P:m:APP:CH (user -> user_info), P:o:APP (user -> signed-in sockets), P:cc:APP (node ->
-- connections). Only the change that moves a total from zero or back to zero reports
-- first/last, and the script runs atomically, so each fact is reported by exactly one node.
-- A node's share of a total is never taken below zero, so repeating a leave changes nothing.
--
-- The webhook cancel window is kept here too, so that it holds across nodes: a last leave
-- of a channel or member leaves a pending key for `delay` ms; a first join on any node that
-- finds the key deletes it and is a 'rejoin' (no webhook for either), and the node holding
-- the leave sends its webhook only if the key is still there when the window closes.
--
-- Member events (and watchlist online/offline) are published to the bus from here, in the
-- order the script runs, so every node sees a user's joins and leaves in the order they
-- happened. Their
-- origin is "" (no node's id), so every node, the one that caused them included, delivers them.
--
-- ARGV: prefix, node, mode (apply | beat | sync), payload (JSON), ttl seconds, delay ms,
-- bus channel ("" = publish nothing), 'members' to publish member frames only.

local P, node, mode, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local delay = tonumber(ARGV[6] or '0')
local bus = ARGV[7]
-- A rebuild after Redis lost everything publishes member frames (every node's channel actor
-- drops those its sockets already know) but no watchlist events.
local members_only = ARGV[8] == 'members'
local payload = cjson.decode(ARGV[4])

local function nodekey(who) return P .. ':n:' .. who end

-- The key holding the total an entry contributes to, and the field within it.
local function total_of(e, who)
  local kind, app = e[1], e[2]
  if kind == 's' then return P .. ':c:' .. app, e[3] end
  if kind == 'p' then return P .. ':u:' .. app .. ':' .. e[3], e[4] end
  if kind == 'o' then return P .. ':o:' .. app, e[3] end
  return P .. ':cc:' .. app, who
end

local function members_of(e) return P .. ':m:' .. e[2] .. ':' .. e[3] end

local function held(e) return delay > 0 and (e[1] == 's' or e[1] == 'p') end
local function pending_of(e) return P .. ':pl:' .. cjson.encode(e) end

local function touch(e, who)
  local k = total_of(e, who)
  redis.call('EXPIRE', k, ttl)
  if e[1] == 'p' then redis.call('EXPIRE', members_of(e), ttl) end
end

-- Every member frame of a channel is numbered, and a join's snapshot carries the number it
-- includes, so a node can give a new member exactly the frames after its snapshot. A
-- sequence starts at the current time in seconds times 1000, not at 1: after Redis lost it
-- (a restart, or its TTL), new numbers are still above every number sockets already hold
-- unless the channel averaged over 1000 member events a second. (Thirteen digits: cjson
-- encodes numbers with 14 significant digits, so a larger base would lose its last ones.)
local function seq_of(e) return P .. ':seq:' .. e[2] .. ':' .. e[3] end

local function current_seq(e)
  local k = seq_of(e)
  local seq = redis.call('GET', k)
  if not seq then
    local t = redis.call('TIME')
    seq = string.format('%.0f', tonumber(t[1]) * 1000)
    redis.call('SET', k, seq)
  end
  redis.call('EXPIRE', k, ttl)
  return tonumber(seq)
end

-- pusher_internal:member_added / member_removed as bellhop's protocol crate encodes them,
-- in a bus envelope (header line, then the frame). `except` is the joining socket.
local function publish_member(e, added, info, except)
  if bus == nil or bus == '' then return end
  current_seq(e)
  local seq = redis.call('INCR', seq_of(e))
  local user = cjson.encode(e[4])
  local event, data
  if added then
    event = 'pusher_internal:member_added'
    data = '{"user_id":' .. user .. ',"user_info":' .. (info or '{}') .. '}'
  else
    event = 'pusher_internal:member_removed'
    data = '{"user_id":' .. user .. '}'
  end
  local channel = cjson.encode(e[3])
  local header = '{"n":"","a":' .. cjson.encode(e[2]) .. ',"t":"e","q":' .. string.format('%.0f', seq) .. ',"c":' .. channel
  if except then header = header .. ',"x":' .. cjson.encode(except) end
  local frame = '{"event":"' .. event .. '","channel":' .. channel .. ',"data":' .. cjson.encode(data) .. '}'
  redis.call('PUBLISH', bus, header .. '}\n' .. frame)
end

-- A user's first signed-in socket anywhere, or their last one leaving, for watchlists.
local function publish_watch(e, online)
  if bus == nil or bus == '' or members_only then return end
  local header = '{"n":"","a":' .. cjson.encode(e[2]) .. ',"t":"w","u":' .. cjson.encode(e[3])
    .. ',"on":' .. tostring(online) .. '}'
  redis.call('PUBLISH', bus, header .. '\n')
end

-- Applies delta d of one entry to its total. Returns the fact it caused (or nil), the total,
-- and for a held leave the pending key its webhook waits on.
local function apply_total(e, d, info, who, except)
  local k, f = total_of(e, who)
  local t = redis.call('HINCRBY', k, f, d)
  if t <= 0 then
    redis.call('HDEL', k, f)
    if e[1] == 'p' then redis.call('HDEL', members_of(e), f) end
    if t - d > 0 then
      if e[1] == 'p' then publish_member(e, false) end
      if e[1] == 'o' then publish_watch(e, false) end
      if held(e) then
        local pk = pending_of(e)
        redis.call('SET', pk, '1', 'PX', delay + 60000)
        return 'last', 0, pk
      end
      return 'last', 0
    end
    return nil, 0
  end
  touch(e, who)
  if t == d then
    if e[1] == 'p' then
      redis.call('HSET', members_of(e), f, info or '{}')
      publish_member(e, true, info, except)
    end
    if e[1] == 'o' then publish_watch(e, true) end
    if held(e) and redis.call('DEL', pending_of(e)) == 1 then return 'rejoin', t end
    return 'first', t
  end
  return nil, t
end

-- Changes `who`'s share of entry e by d (never below zero) and the total with it.
local function change(who, e, d, info, except)
  local field = cjson.encode(e)
  local nk = nodekey(who)
  local cur = tonumber(redis.call('HGET', nk, field) or '0')
  if d < -cur then d = -cur end
  if d == 0 then
    local k, f = total_of(e, who)
    return nil, tonumber(redis.call('HGET', k, f) or '0'), 0
  end
  local n = cur + d
  if n <= 0 then redis.call('HDEL', nk, field) else redis.call('HSET', nk, field, n) end
  local fact, t, pending = apply_total(e, d, info, who, except)
  return fact, t, d, pending
end

local function members(e)
  local flat = redis.call('HGETALL', members_of(e))
  local out = {}
  for i = 1, #flat, 2 do out[#out + 1] = { flat[i], flat[i + 1] } end
  return out
end

local function full(e, max)
  if max == nil or max <= 0 then return false end
  local k, f = total_of(e, node)
  if e[1] == 'c' then
    local sum = 0
    for _, v in ipairs(redis.call('HVALS', k)) do sum = sum + tonumber(v) end
    return sum >= max
  end
  return redis.call('HEXISTS', k, f) == 0 and redis.call('HLEN', k) >= max
end

if mode == 'apply' then
  -- payload: list of { e = entry, d = delta, i = user_info, max = limit, want = members?,
  -- x = socket, gated = refuse if the op before was refused }
  local out = {}
  for idx, op in ipairs(payload) do
    local r = {}
    if (op.gated and idx > 1 and out[idx - 1].full) or (op.d > 0 and full(op.e, op.max)) then
      r.full = true
    else
      local fact, t, d, pending = change(node, op.e, op.d, op.i, op.x)
      r.fact, r.total, r.d, r.pending = fact, t, d, pending
      if op.want then
        r.members = members(op.e)
        r.seq = current_seq(op.e)
      end
    end
    out[idx] = r
  end
  redis.call('EXPIRE', nodekey(node), ttl)
  return cjson.encode(out)
end

if mode == 'beat' then
  -- payload: { dead_after = ms, epoch = candidate }; the time is Redis's own.
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local cutoff = now - payload.dead_after
  local epoch = redis.call('GET', P .. ':epoch')
  if not epoch then
    -- Redis lost everything (or this is the first node): a new epoch, and when it began, so
    -- the bus knows the node list is still being rebuilt (see publish.lua).
    epoch = payload.epoch
    redis.call('SET', P .. ':epoch', epoch)
    redis.call('SET', P .. ':epoch_at', now)
  end
  if redis.call('EXISTS', P .. ':epoch_at') == 0 then
    -- An epoch from before epoch_at was kept: long settled.
    redis.call('SET', P .. ':epoch_at', 1)
  end
  redis.call('EXPIRE', P .. ':epoch', ttl)
  redis.call('EXPIRE', P .. ':epoch_at', ttl)
  local registered = redis.call('ZSCORE', P .. ':nodes', node) ~= false
  redis.call('ZADD', P .. ':nodes', now, node)
  redis.call('EXPIRE', P .. ':nodes', ttl)
  redis.call('EXPIRE', nodekey(node), ttl)
  -- Nodes that stopped beating: the first survivor to see one takes its share away, once.
  local facts = {}
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', cutoff)) do
    if dead ~= node then
      redis.call('ZREM', P .. ':nodes', dead)
      local flat = redis.call('HGETALL', nodekey(dead))
      for i = 1, #flat, 2 do
        local e = cjson.decode(flat[i])
        local fact, _, pending = apply_total(e, -tonumber(flat[i + 1]), nil, dead)
        if fact then facts[#facts + 1] = { fact, e, pending } end
      end
      redis.call('DEL', nodekey(dead))
      facts[#facts + 1] = { 'reaped', { dead } }
    end
  end
  local r = { epoch = epoch, registered = registered }
  if #facts > 0 then r.facts = facts end
  return cjson.encode(r)
end

if mode == 'sync' then
  -- payload: list of { e = entry, n = count, i = user_info }: this node's whole share.
  -- Brings the node's record to exactly that, and reports the facts the difference caused.
  local nk = nodekey(node)
  local seen = {}
  local facts = {}
  for _, want in ipairs(payload) do
    local field = cjson.encode(want.e)
    seen[field] = true
    local cur = tonumber(redis.call('HGET', nk, field) or '0')
    if want.n ~= cur then
      local fact, _, _, pending = change(node, want.e, want.n - cur, want.i)
      if fact then facts[#facts + 1] = { fact, want.e, pending } end
    end
    touch(want.e, node)
  end
  local flat = redis.call('HGETALL', nk)
  for i = 1, #flat, 2 do
    if not seen[flat[i]] then
      local e = cjson.decode(flat[i])
      local fact, _, _, pending = change(node, e, -tonumber(flat[i + 1]), nil)
      if fact then facts[#facts + 1] = { fact, e, pending } end
    end
  end
  redis.call('EXPIRE', nk, ttl)
  local r = {}
  if #facts > 0 then r.facts = facts end
  return cjson.encode(r)
end

if mode == 'truth' then
  -- payload: a presence member entry's channel part { 'p', app, channel }: the members list
  -- and the number of the last member frame it includes, read together.
  return cjson.encode({ seq = current_seq(payload), members = members(payload) })
end

return redis.error_reply('unknown ledger mode ' .. tostring(mode))

