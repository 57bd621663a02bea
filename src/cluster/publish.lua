-- Publishes bus messages only when every node that must hear them is subscribed, so that a
-- trigger answered 2xx is never a silent drop on a node that missed it.
--
-- A node listens on the bus channel and, on the same connection, on its own marker channel
-- P:node:ID, so PUBSUB NUMSUB of the marker says whether that node hears the bus right now.
-- The nodes that must hear: those that beat within `fresh` ms (a killed node stops beating at
-- once, so it stops being required soon); while the ledger's epoch is missing or younger than
-- `dead_after` (Redis came back empty and not every node has beaten yet), every node the
-- caller knew that has not beaten in it; and while the caller itself is just back from an
-- outage, every node it knew.
--
-- ARGV: prefix, caller node, fresh ms, dead_after ms, caller recovering ('1' | '0'),
-- known nodes (JSON array), messages... (none: only answer the live nodes).
-- Returns { 1, live nodes as JSON } after publishing, or { 0, the node that is not listening }.

local P, self = ARGV[1], ARGV[2]
local fresh, dead_after = tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

if #ARGV > 6 then
  local required = {}
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', now - fresh, '+inf')) do
    required[n] = true
  end
  local epoch_at = tonumber(redis.call('GET', P .. ':epoch_at') or '0')
  local young = epoch_at == 0 or now - epoch_at < dead_after
  local recovering = ARGV[5] == '1'
  for _, n in ipairs(cjson.decode(ARGV[6])) do
    -- A known node with no beat at all in a young epoch has not beaten since Redis came back
    -- empty; one with an old beat there died since (and stops counting with its beat).
    if recovering or (young and not redis.call('ZSCORE', P .. ':nodes', n)) then
      required[n] = true
    end
  end
  required[self] = nil
  for n in pairs(required) do
    local subs = redis.call('PUBSUB', 'NUMSUB', P .. ':node:' .. n)
    if tonumber(subs[2]) < 1 then return { 0, n } end
  end
  for i = 7, #ARGV do redis.call('PUBLISH', P .. ':bus', ARGV[i]) end
end

local live = redis.call('ZRANGEBYSCORE', P .. ':nodes', now - dead_after, '+inf')
return { 1, cjson.encode(live) }
