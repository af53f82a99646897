"""The arbiter's atomic steps as Lua scripts: each implements one event of ``model.py`` exactly.

Every script shares the same KEYS and the first eight ARGV (the header below); the event's own
arguments follow. Per-replica keys (usage buckets, wake list) are built inside the script from the
prefix in ARGV[1]; every key carries the device's hash tag (``fastgshare.keys.arbiter``), so all
of one device's state lives in one slot.

Time: ARGV[2] is ``now_us``; when empty the script reads the server's ``TIME``. The client sends
it empty, so every sidecar on every host uses one clock (the Redis server's) at no extra round
trip; tests send explicit values to drive time. The stored clock never goes backwards.

Numbers are integers (microseconds, percent) kept well under 2^53, so Lua's doubles are exact and
``string.format('%d')`` writes them without an exponent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastgshare import keys

from .model import ArbiterParams, Grant, Outcome, ReplicaSpec

_HEADER = """
-- KEYS[1] cfg      hash   replica -> "sm|request_us|limit_us|cores" (cores: "0,1" or "" on a GPU)
-- KEYS[2] est      hash   replica -> smoothed burst (charged us per token)
-- KEYS[3] waiters  zset   replica -> enqueue sequence
-- KEYS[4] holders  hash   replica -> "token_id|granted_us|token_us|expires_us|sm|cores"
-- KEYS[5] seq      string sequence counter (enqueues and token ids)
-- KEYS[6] clock    string last now_us used (monotone)
-- ARGV[1] prefix of per-replica keys: prefix.."use:"..rid (hash bucket -> us),
--         prefix.."wake:"..rid (list of pushed leases "token_id|token_us|expires_us")
-- ARGV[2] now_us, or "" for the server's TIME
-- ARGV[3..8] window_us, bucket_us, min_token_us, max_token_us, lease_grace_us, capacity_pct
-- returns {now_us, hint_us, rid, token_id, token_us, expires_us, rid, ...} (grants this round)
"""

_PRELUDE = r"""
local PREFIX = ARGV[1]
local WINDOW, BUCKET = tonumber(ARGV[3]), tonumber(ARGV[4])
local MIN_TOK, MAX_TOK = tonumber(ARGV[5]), tonumber(ARGV[6])
local GRACE, CAPACITY = tonumber(ARGV[7]), tonumber(ARGV[8])
local NB = math.floor(WINDOW / BUCKET)

local function I(n) return string.format('%d', n) end

local function clock()
  local now
  if ARGV[2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = tonumber(ARGV[2])
  end
  local last = tonumber(redis.call('GET', KEYS[6]) or '0')
  if now < last then now = last end
  redis.call('SET', KEYS[6], I(now))
  return now
end

local function token_len(est)
  if est <= 0 then return MAX_TOK end
  return math.min(MAX_TOK, math.max(MIN_TOK, est + math.floor(est / 4)))
end

local function lease_len(tok, est)
  return tok + math.max(GRACE, 2 * est)
end

local function buckets_of(rid)
  local flat = redis.call('HGETALL', PREFIX .. 'use:' .. rid)
  local out = {}
  for i = 1, #flat, 2 do out[#out + 1] = {tonumber(flat[i]), tonumber(flat[i + 1])} end
  return out
end

local function usage(bs, now)
  local low = math.floor(now / BUCKET) - NB
  local u = 0
  for _, bv in ipairs(bs) do if bv[1] > low then u = u + bv[2] end end
  return u
end

local function cap_eases_at(bs, used, tok, limit, now)
  local low = math.floor(now / BUCKET) - NB
  local live = {}
  for _, bv in ipairs(bs) do if bv[1] > low then live[#live + 1] = bv end end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for _, bv in ipairs(live) do
    used = used - bv[2]
    if used + tok <= limit then return (bv[1] + NB) * BUCKET end
  end
  return now
end

local function charge(rid, amount, now)
  -- spread over the buckets of [now - amount, now] (the time it was used), within the window
  if amount <= 0 then return end
  local key = PREFIX .. 'use:' .. rid
  local cur = math.floor(now / BUCKET)
  local low = cur - NB
  local e, s, b = now, now - amount, cur
  while e > s and b > low do
    local lo = math.max(s, b * BUCKET)
    if e > lo then redis.call('HINCRBY', key, I(b), I(e - lo)) end
    e, b = lo, b - 1
  end
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if tonumber(f) <= low then redis.call('HDEL', key, f) end
  end
end

local function parse_holding(v)
  local tok, granted, len, exp, sm, cores =
    string.match(v, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|([%d,]*)$')
  return tonumber(tok), tonumber(granted), tonumber(len), tonumber(exp), tonumber(sm), cores
end

local function core_list(cores)
  local out = {}
  for c in string.gmatch(cores, '%d+') do out[#out + 1] = c end
  return out
end

local function grant_round(now, caller)
  local used_pct = 0
  local busy_cores = {}
  local holding = {}
  local hs = redis.call('HGETALL', KEYS[4])
  for i = 1, #hs, 2 do
    local rid = hs[i]
    local _, _, len, exp, sm, cores = parse_holding(hs[i + 1])
    if exp <= now then
      redis.call('HDEL', KEYS[4], rid)
      charge(rid, len, now)
    else
      holding[rid] = exp
      if cores ~= '' then
        for _, c in ipairs(core_list(cores)) do busy_cores[c] = true end
      else
        used_pct = used_pct + sm
      end
    end
  end
  local hint = -1
  local cands = {}
  local ws = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #ws, 2 do
    local rid, seq = ws[i], tonumber(ws[i + 1])
    if not holding[rid] then
      local sm, req, lim, cores =
        string.match(redis.call('HGET', KEYS[1], rid), '^(%d+)|(%d+)|(%d+)|([%d,]*)$')
      sm, req, lim = tonumber(sm), tonumber(req), tonumber(lim)
      local est = tonumber(redis.call('HGET', KEYS[2], rid) or '0')
      local tok = token_len(est)
      local bs = buckets_of(rid)
      local used = usage(bs, now)
      local need = math.min(MIN_TOK, lim)
      -- granted for its guarantee: only up to it (what is left of the request, >= MIN_TOK)
      if used < req then tok = math.min(tok, math.max(MIN_TOK, req - used)) end
      if lim < WINDOW then tok = math.min(tok, lim - used) end
      if lim >= WINDOW or used + need <= lim then
        cands[#cands + 1] = {rid = rid, seq = seq, sm = sm, req = req, used = used,
                             tok = tok, est = est, under = used < req, cores = cores}
      else
        local delay = cap_eases_at(bs, used, need, lim, now) - now
        if hint < 0 or delay < hint then hint = delay end
      end
    end
  end
  table.sort(cands, function(a, b)
    if a.under ~= b.under then return a.under end
    if a.under then
      local x, y = a.used * b.req, b.used * a.req
      if x ~= y then return x < y end
    elseif a.used ~= b.used then
      return a.used < b.used
    end
    return a.seq < b.seq
  end)
  local grants = {}
  for _, c in ipairs(cands) do
    local fits = true
    if c.cores ~= '' then
      local mine = core_list(c.cores)
      for _, k in ipairs(mine) do
        if busy_cores[k] then fits = false end
      end
      -- taken, or reserved for this waiter: nobody behind it gets these cores this round
      for _, k in ipairs(mine) do busy_cores[k] = true end
    elseif used_pct + c.sm > CAPACITY then
      break
    else
      used_pct = used_pct + c.sm
    end
    if fits then
      local tok_id = redis.call('INCR', KEYS[5])
      local exp = now + lease_len(c.tok, c.est)
      redis.call('HSET', KEYS[4], c.rid, I(tok_id) .. '|' .. I(now) .. '|' .. I(c.tok) .. '|' ..
        I(exp) .. '|' .. I(c.sm) .. '|' .. c.cores)
      redis.call('ZREM', KEYS[3], c.rid)
      holding[c.rid] = exp
      if c.rid ~= caller then
        local wk = PREFIX .. 'wake:' .. c.rid
        redis.call('DEL', wk)
        redis.call('RPUSH', wk, I(tok_id) .. '|' .. I(c.tok) .. '|' .. I(exp))
        redis.call('PEXPIRE', wk, math.floor((exp - now) / 1000) + 1000)
      end
      grants[#grants + 1] = {c.rid, tok_id, c.tok, exp}
    end
  end
  if redis.call('ZCARD', KEYS[3]) > 0 then
    for _, exp in pairs(holding) do
      if hint < 0 or exp - now < hint then hint = exp - now end
    end
  end
  local out = {now, hint}
  for _, g in ipairs(grants) do
    out[#out + 1] = g[1]; out[#out + 1] = g[2]; out[#out + 1] = g[3]; out[#out + 1] = g[4]
  end
  return out
end
"""

ACQUIRE = _HEADER + """
-- ARGV[9] replica, ARGV[10] sm_pct, ARGV[11] request_us, ARGV[12] limit_us, ARGV[13] cores
-- (Re)registers the replica, enqueues it unless already waiting, runs a grant round; a grant to
-- the caller is returned, not pushed.
""" + _PRELUDE + """
local now = clock()
local rid = ARGV[9]
redis.call('HSET', KEYS[1], rid, ARGV[10] .. '|' .. ARGV[11] .. '|' .. ARGV[12] .. '|' .. ARGV[13])
if not redis.call('ZSCORE', KEYS[3], rid) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), rid)
end
return grant_round(now, rid)
"""

RELEASE = _HEADER + """
-- ARGV[9] replica, ARGV[10] token_id, ARGV[11] token_us, ARGV[12] busy_us,
-- ARGV[13..16] optional sm_pct, request_us, limit_us, cores: requeue the replica (more work)
-- Returns a token and charges the time it was held (now - granted) or the measured busy time if
-- larger (only the busy part past the token when the lease had already expired and been
-- charged), updates the burst estimate, requeues, runs a grant round (with the requeued
-- replica as the caller: its grant is returned, not pushed).
""" + _PRELUDE + """
local now = clock()
local rid, tok_id = ARGV[9], tonumber(ARGV[10])
local tok, busy = tonumber(ARGV[11]), tonumber(ARGV[12])
local h = redis.call('HGET', KEYS[4], rid)
local h_tok, h_granted
if h then h_tok, h_granted = parse_holding(h) end
local burst = busy
if h and h_tok == tok_id then
  redis.call('HDEL', KEYS[4], rid)
  burst = math.max(busy, now - h_granted)  -- the time held, or the busy time if more
  charge(rid, burst, now)
else
  charge(rid, busy - tok, now)
end
if burst > 0 then  -- the burst estimate follows what is charged, so the token covers it
  local est = tonumber(redis.call('HGET', KEYS[2], rid) or '0')
  if est > 0 then est = math.floor((7 * est + burst) / 8) else est = burst end
  redis.call('HSET', KEYS[2], rid, I(est))
end
if ARGV[13] then
  redis.call('HSET', KEYS[1], rid,
    ARGV[13] .. '|' .. ARGV[14] .. '|' .. ARGV[15] .. '|' .. ARGV[16])
  if not redis.call('ZSCORE', KEYS[3], rid) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), rid)
  end
  return grant_round(now, rid)
end
return grant_round(now, false)
"""

RENEW = _HEADER + """
-- ARGV[9] replica, ARGV[10] token_id
-- A live holder's heartbeat: a lease still in force is extended to at least now + the grace
-- (max(GRACE, 2 x estimate)); an expired one is not (it is dead, reaped by the next round).
-- Returns {now, -1} plus the renewed lease as the only grant, or no grant when it was lost.
""" + _PRELUDE + """
local now = clock()
local rid, tok_id = ARGV[9], tonumber(ARGV[10])
local h = redis.call('HGET', KEYS[4], rid)
if not h then return {now, -1} end
local h_tok, h_granted, h_len, h_exp, h_sm, h_cores = parse_holding(h)
if h_tok ~= tok_id or h_exp <= now then return {now, -1} end
local est = tonumber(redis.call('HGET', KEYS[2], rid) or '0')
local exp = math.max(h_exp, now + lease_len(0, est))
redis.call('HSET', KEYS[4], rid, I(h_tok) .. '|' .. I(h_granted) .. '|' .. I(h_len) .. '|' ..
  I(exp) .. '|' .. I(h_sm) .. '|' .. h_cores)
return {now, -1, rid, h_tok, h_len, exp}
"""

CANCEL = _HEADER + """
-- ARGV[9] replica
-- A waiter gave up: leave the queue and hand back, uncharged, a grant it never picked up.
""" + _PRELUDE + """
local now = clock()
local rid = ARGV[9]
redis.call('ZREM', KEYS[3], rid)
redis.call('HDEL', KEYS[4], rid)
redis.call('DEL', PREFIX .. 'wake:' .. rid)
return grant_round(now, false)
"""

UNREGISTER = _HEADER + """
-- ARGV[9] replica
-- Forget the replica (it stopped): configuration, estimate, queue place, token, usage, wake list.
""" + _PRELUDE + """
local now = clock()
local rid = ARGV[9]
redis.call('HDEL', KEYS[1], rid)
redis.call('HDEL', KEYS[2], rid)
redis.call('ZREM', KEYS[3], rid)
redis.call('HDEL', KEYS[4], rid)
redis.call('DEL', PREFIX .. 'use:' .. rid, PREFIX .. 'wake:' .. rid)
return grant_round(now, false)
"""

TICK = _HEADER + """
-- (no event arguments) Expire leases and grant what became possible.
""" + _PRELUDE + """
return grant_round(clock(), false)
"""

PARTS = ("cfg", "est", "waiters", "holders", "seq", "clock")
"""The names (``keys.arbiter(device, part)``) of KEYS[1..6]."""


def device_keys(device_id: str) -> list[str]:
    return [keys.arbiter(device_id, part) for part in PARTS]


def replica_prefix(device_id: str) -> str:
    """ARGV[1]: per-replica keys are ``keys.arbiter(device, "use:<rid>")`` and ``"wake:<rid>"``."""
    return keys.arbiter(device_id, "")


def wake_key(device_id: str, replica: str) -> str:
    return keys.arbiter(device_id, f"wake:{replica}")


def usage_key(device_id: str, replica: str) -> str:
    return keys.arbiter(device_id, f"use:{replica}")


def cores_text(cores: tuple[int, ...]) -> str:
    """A core set as the scripts store it: ``"0,1"``; ``""`` for none (a GPU replica)."""
    return ",".join(map(str, cores))


def spec_args(spec: ReplicaSpec) -> list[object]:
    return [spec.sm_pct, spec.request_us, spec.limit_us, cores_text(spec.cores)]


def parse_outcome(raw: list[Any]) -> Outcome:
    """Turn a script's reply into the model's Outcome (so tests compare like with like)."""
    now_us, hint_us = int(raw[0]), int(raw[1])
    grants = []
    for i in range(2, len(raw), 4):
        rid = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
        grants.append(Grant(rid, int(raw[i + 1]), int(raw[i + 2]), int(raw[i + 3])))
    return Outcome(now_us, hint_us, tuple(grants))


def parse_wake(item: bytes | str) -> tuple[int, int, int]:
    """A pushed lease: (token_id, token_us, expires_us)."""
    text = item.decode() if isinstance(item, bytes) else item
    tok, length, exp = text.split("|")
    return int(tok), int(length), int(exp)


@dataclass(frozen=True)
class ArbiterScripts:
    """The scripts registered once on one connection (sync ``redis.Redis`` or ``redis.asyncio``),
    with argument builders; calls return what the connection returns (a reply or an awaitable)."""

    device_id: str
    params: ArbiterParams
    acquire_script: Any
    release_script: Any
    cancel_script: Any
    unregister_script: Any
    tick_script: Any
    renew_script: Any

    @classmethod
    def register(cls, client: Any, device_id: str, params: ArbiterParams) -> ArbiterScripts:
        return cls(device_id, params, *(client.register_script(s) for s in
                                        (ACQUIRE, RELEASE, CANCEL, UNREGISTER, TICK, RENEW)))

    def _args(self, now_us: int | None, *extra: object) -> list[object]:
        return [replica_prefix(self.device_id), "" if now_us is None else int(now_us),
                *self.params.as_args(), *extra]

    def acquire(self, replica: str, spec: ReplicaSpec, now_us: int | None = None) -> Any:
        return self.acquire_script(keys=device_keys(self.device_id), args=self._args(
            now_us, replica, *spec_args(spec)))

    def release(self, replica: str, token_id: int, token_us: int, busy_us: int,
                now_us: int | None = None, requeue: ReplicaSpec | None = None) -> Any:
        extra = [] if requeue is None else spec_args(requeue)
        return self.release_script(keys=device_keys(self.device_id), args=self._args(
            now_us, replica, token_id, token_us, max(0, int(busy_us)), *extra))

    def renew(self, replica: str, token_id: int, now_us: int | None = None) -> Any:
        return self.renew_script(keys=device_keys(self.device_id),
                                 args=self._args(now_us, replica, token_id))

    def cancel(self, replica: str, now_us: int | None = None) -> Any:
        return self.cancel_script(keys=device_keys(self.device_id),
                                  args=self._args(now_us, replica))

    def unregister(self, replica: str, now_us: int | None = None) -> Any:
        return self.unregister_script(keys=device_keys(self.device_id),
                                      args=self._args(now_us, replica))

    def tick(self, now_us: int | None = None) -> Any:
        return self.tick_script(keys=device_keys(self.device_id), args=self._args(now_us))
