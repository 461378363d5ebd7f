-- roomcast presence in Redis. Every script gets the key prefix as ARGV[1].
-- Keys (P = prefix):
--   P:conn_node, P:conn_user   hash conn -> node / user ('' when anonymous)
--   P:conn:<c>:rooms           set of rooms of a connection
--   P:room:<r>                 hash conn -> user, the members of a room
--   P:room:<r>:users           hash user -> connections of that user in the room
--   P:rooms                    hash room -> connections in it
--   P:user:<u>                 set of a user's connections
--   P:users                    hash user -> number of connections
--   P:node:<n>:conns           set of a node's connections
--   P:nodes                    zset node -> last heartbeat (ms, Redis clock)
--   P:nodeinfo                 hash node -> JSON {connections, address} at last heartbeat
local P = ARGV[1]

local function leave(room, c)
  local rk = P .. ':room:' .. room
  local u = redis.call('HGET', rk, c)
  if not u then return nil end
  redis.call('HDEL', rk, c)
  redis.call('SREM', P .. ':conn:' .. c .. ':rooms', room)
  local last = 0
  if u ~= '' then
    if redis.call('HINCRBY', rk .. ':users', u, -1) <= 0 then
      redis.call('HDEL', rk .. ':users', u)
      last = 1
    end
  end
  if redis.call('HINCRBY', P .. ':rooms', room, -1) <= 0 then
    redis.call('HDEL', P .. ':rooms', room)
  end
  return {last, u}
end

local function join(room, c, u)
  local rk = P .. ':room:' .. room
  if redis.call('HSETNX', rk, c, u) == 0 then
    return {0, 0, redis.call('HLEN', rk)}
  end
  redis.call('SADD', P .. ':conn:' .. c .. ':rooms', room)
  local first = 0
  if u ~= '' and redis.call('HINCRBY', rk .. ':users', u, 1) == 1 then
    first = 1
  end
  redis.call('HINCRBY', P .. ':rooms', room, 1)
  return {1, first, redis.call('HLEN', rk)}
end

local function unuser(c, u)
  if u and u ~= '' and redis.call('SREM', P .. ':user:' .. u, c) == 1 then
    if redis.call('HINCRBY', P .. ':users', u, -1) <= 0 then
      redis.call('HDEL', P .. ':users', u)
    end
  end
end

local function connect(c, n, u, info)
  local old = redis.call('HGET', P .. ':conn_user', c)
  if old and old ~= u then unuser(c, old) end
  redis.call('HSET', P .. ':conn_node', c, n)
  redis.call('HSET', P .. ':conn_user', c, u)
  if info and info ~= '' then
    redis.call('HSET', P .. ':conn_info', c, info)
  else
    redis.call('HDEL', P .. ':conn_info', c)
  end
  redis.call('SADD', P .. ':node:' .. n .. ':conns', c)
  if u ~= '' and redis.call('SADD', P .. ':user:' .. u, c) == 1 then
    redis.call('HINCRBY', P .. ':users', u, 1)
  end
end

-- Returns the leave events it causes: conn, room, user, conn, room, user, ...
local function disconnect(c, events)
  for _, room in ipairs(redis.call('SMEMBERS', P .. ':conn:' .. c .. ':rooms')) do
    local r = leave(room, c)
    if r and r[1] == 1 then
      table.insert(events, c); table.insert(events, room); table.insert(events, r[2])
    end
  end
  redis.call('DEL', P .. ':conn:' .. c .. ':rooms')
  unuser(c, redis.call('HGET', P .. ':conn_user', c))
  local n = redis.call('HGET', P .. ':conn_node', c)
  if n then redis.call('SREM', P .. ':node:' .. n .. ':conns', c) end
  redis.call('HDEL', P .. ':conn_user', c)
  redis.call('HDEL', P .. ':conn_node', c)
  redis.call('HDEL', P .. ':conn_info', c)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local op = ARGV[2]
if op == 'join' then            -- room, conn, user
  return join(ARGV[3], ARGV[4], ARGV[5])
elseif op == 'leave' then       -- room, conn
  local r = leave(ARGV[3], ARGV[4])
  if not r then return {0, 0} end
  return {1, r[1]}
elseif op == 'connect' then     -- conn, node, user, info JSON (or '')
  connect(ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return 1
elseif op == 'disconnect' then  -- conn
  local events = {}
  disconnect(ARGV[3], events)
  return events
elseif op == 'sync' then        -- conn, node, user, info JSON (or ''), rooms...
  local c, u = ARGV[3], ARGV[5]
  connect(c, ARGV[4], u, ARGV[6])
  local want = {}
  for i = 7, #ARGV do want[ARGV[i]] = true end
  for _, room in ipairs(redis.call('SMEMBERS', P .. ':conn:' .. c .. ':rooms')) do
    if not want[room] then leave(room, c) end
  end
  for i = 7, #ARGV do join(ARGV[i], c, u) end
  return 1
elseif op == 'heartbeat' then   -- node, info JSON, ttl_ms; returns {was_registered, dead nodes...}
  local now = now_ms()
  local added = redis.call('ZADD', P .. ':nodes', now, ARGV[3])
  redis.call('HSET', P .. ':nodeinfo', ARGV[3], ARGV[4])
  local out = {1 - added}
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now - tonumber(ARGV[5]))) do
    table.insert(out, n)
  end
  return out
elseif op == 'reap' then        -- node, ttl_ms, batch; returns {done, {conn, user, ...}, {leave events}}
  local n = ARGV[3]
  local seen = redis.call('ZSCORE', P .. ':nodes', n)
  if seen and tonumber(seen) >= now_ms() - tonumber(ARGV[4]) then return {1, {}, {}} end
  local conns = redis.call('SPOP', P .. ':node:' .. n .. ':conns', tonumber(ARGV[5]))
  local gone, events, done = {}, {}, 0
  for _, c in ipairs(conns) do
    table.insert(gone, c); table.insert(gone, redis.call('HGET', P .. ':conn_user', c) or '')
    disconnect(c, events)
  end
  if #conns < tonumber(ARGV[5]) then
    redis.call('ZREM', P .. ':nodes', n)
    redis.call('HDEL', P .. ':nodeinfo', n)
    done = 1
  end
  return {done, gone, events}
elseif op == 'nodes' then       -- returns {now, node, seen, conns, ...}
  local out = {now_ms()}
  local all = redis.call('ZRANGE', P .. ':nodes', 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    table.insert(out, all[i]); table.insert(out, all[i + 1])
    table.insert(out, redis.call('HGET', P .. ':nodeinfo', all[i]) or '{}')
  end
  return out
end
return redis.error_reply('unknown presence op ' .. tostring(op))
