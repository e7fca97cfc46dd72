"""The Redis writer: :class:`Recorder` takes :class:`RecordEvent` s from the SIP path without ever
waiting, and applies them to Redis (layout: docs/records.md), through a durable local spool
(:mod:`.spool`) whenever Redis is down or slow.

Order: events reach Redis in the order they were submitted. The in-memory queue only ever holds
events older than everything in the spool: once an event went to the spool (queue full, Redis
down), later events go to the spool too until it has been replayed, and the writer empties the
queue before it replays the spool.

Exactly once: each event is applied by one Lua script whose first step is ``SET P seen:<id> NX``;
a retried batch, a replayed spool or a second daemon replaying the same event changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import fields as dc_fields
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from telephony.config import Config
from telephony.recording.events import RecordEvent, utf8
from telephony.recording.spool import BATCH_INTERVAL, Spool
from telephony.tasks import cancel_and_wait

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class _NotLoadedError(Exception):
    """Stands for redis-py's exception classes until redis-py is imported (never raised)."""


#: what a failed Redis operation raises, and a script Redis no longer knows: redis-py's classes
#: once :func:`load_redis` ran. redis-py is imported by the writer, in a worker thread, the
#: first time it connects (~0.1 s at startup otherwise; the daemon serves without waiting).
#: Other Redis users of the daemon (telephony/registrations.py) read ``store.FAILED`` at the
#: time of the ``except``, after their own :func:`load_redis`.
FAILED: tuple[type[BaseException], ...] = (TimeoutError, OSError)
_NO_SCRIPT: type[BaseException] = _NotLoadedError


def load_redis() -> None:
    global FAILED, _NO_SCRIPT  # noqa: PLW0603 (bound once, by the first connect)
    import redis.asyncio  # noqa: F401, PLC0415
    from redis.exceptions import NoScriptError, RedisError  # noqa: PLC0415

    FAILED = (TimeoutError, RedisError, OSError)
    _NO_SCRIPT = NoScriptError


def new_client(url: str) -> aioredis.Redis:
    import redis.asyncio as aioredis  # noqa: PLC0415 (loaded by load_redis already)
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return aioredis.Redis.from_url(
        url,
        socket_timeout=OP_TIMEOUT,
        socket_connect_timeout=min(OP_TIMEOUT, 2.0),
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


log = logging.getLogger("telephony.records")
_NAMES: Final = tuple(f.name for f in dc_fields(RecordEvent))

#: events per round trip (one EVALSHA)
BATCH: Final = 256
#: reconnect backoff: first wait and cap, seconds
BACKOFF_MIN: Final = 0.5
BACKOFF_MAX: Final = 5.0
#: a Redis round trip slower than this counts as Redis down (the batch goes to the spool)
OP_TIMEOUT: Final = 3.0
#: how long an applied event's id is remembered (seen key TTL), capped by the retention: a
#: duplicate can only come from a batch re-sent or a spool replayed before its ack was written,
#: i.e. within seconds of the first write, or at the next start after a crash
DEDUP_TTL: Final = 14 * 86400
#: how often the by_time zsets are trimmed of members older than the retention
TRIM_EVERY: Final = 600.0

# One call applies a whole batch. ARGV: 1 key prefix, 2 retention seconds, 3 stream maxlen,
# 4 seen-key TTL seconds, 5 the events as one JSON array; each event an array of strings
# [field, value, field, value, ...] (PHI rule already applied; the array keeps the field order).
# The keys are built from the prefix and the events' ids (call_id, transfer_id, id), so the
# script declares none: fine on a standalone Redis (what handoffd supports), not on Redis Cluster.
# One EVALSHA per batch instead of one per event: redis-py packs 5 arguments instead of ~12 per
# event, and parses one reply (bench/recorder.py: the writer's CPU per event).
APPLY_LUA: Final = r"""
local P, ttl, maxlen, seen_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local function copy(key, f, names)
  local args = {}
  for _, n in ipairs(names) do
    if f[n] then
      args[#args + 1] = n
      args[#args + 1] = f[n]
    end
  end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
  end
end

local stamps = {
  transfer_requested = 'requested_ms', destination_trying = 'trying_ms',
  destination_ringing = 'ringing_ms', destination_answered = 'answered_ms',
  completed = 'completed_ms', dispatcher_left = 'dispatcher_left_ms', failed = 'failed_ms',
  cancelled = 'cancelled_ms', abandoned = 'abandoned_ms', returned_to_dispatcher = 'returned_ms'}

local function apply(entry)
  local f = {}
  for i = 1, #entry, 2 do
    f[entry[i]] = entry[i + 1]
  end
  if not redis.call('SET', P .. 'seen:' .. f['id'], '1', 'NX', 'EX', seen_ttl) then
    return 0
  end
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxlen, '*', unpack(entry))

  local kind, at = f['kind'], f['at_ms']
  local C = P .. 'call:' .. f['call_id']
  copy(C, f, {'call_id', 'psap', 'trunk', 'emergency_call_id', 'incident_id', 'position',
              'caller_number', 'caller_hash', 'location'})
  if kind == 'call_offered' then
    redis.call('HSETNX', C, 'offered_ms', at)
    redis.call('HSETNX', C, 'transfers', '0')
    redis.call('ZADD', P .. 'calls:by_time', 'NX', at, f['call_id'])
  elseif kind == 'answered_by_dispatcher' then
    redis.call('HSETNX', C, 'answered_ms', at)
  elseif kind == 'call_ended' then
    redis.call('HSETNX', C, 'ended_ms', at)
  elseif kind == 'transfer_requested' then
    redis.call('HINCRBY', C, 'transfers', 1)
  end
  redis.call('EXPIRE', C, ttl)

  local tid = f['transfer_id']
  if not tid then
    return 1
  end
  local T = P .. 'transfer:' .. tid
  copy(T, f, {'transfer_id', 'call_id', 'psap', 'trunk', 'emergency_call_id', 'incident_id',
              'position', 'trigger', 'mode', 'triage_level', 'caller_number', 'caller_hash'})
  if f['call_offered_ms'] then
    redis.call('HSETNX', T, 'call_offered_ms', f['call_offered_ms'])
  end
  if stamps[kind] then
    redis.call('HSETNX', T, stamps[kind], at)
  end
  if kind == 'transfer_requested' then
    local answered = redis.call('HGET', C, 'answered_ms')
    if answered then
      redis.call('HSETNX', T, 'dispatcher_answered_ms', answered)
    end
    redis.call('HSETNX', T, 'failovers', '0')
    redis.call('ZADD', P .. 'transfers:by_time', 'NX', at, tid)
  elseif kind == 'failover' then
    redis.call('HINCRBY', T, 'failovers', 1)
  elseif kind == 'abandoned' and f['phase'] then
    redis.call('HSET', T, 'phase', f['phase'])
  end
  if kind == 'completed' or kind == 'failed' or kind == 'cancelled' or kind == 'abandoned' then
    redis.call('HSET', T, 'outcome', kind)
  end
  local dest = f['destination']
  if dest then
    if kind == 'destination_trying' or kind == 'destination_ringing'
        or kind == 'destination_answered' or kind == 'completed' or kind == 'failed' then
      redis.call('HSET', T, 'destination', dest)
    else
      redis.call('HSETNX', T, 'destination', dest)
    end
  end
  if kind == 'failed' or kind == 'cancelled' or kind == 'failover' then
    copy(T, f, {'sip_status', 'reason'})
  end
  redis.call('EXPIRE', T, ttl)

  if kind == 'failed' then
    local D = P .. 'discrepancy:' .. tid
    redis.call('HSET', D, 'transfer_id', tid, 'agency', f['psap'], 'at_ms', at)
    copy(D, f, {'call_id', 'incident_id', 'emergency_call_id', 'sip_status', 'destination',
                'reason'})
    redis.call('ZADD', P .. 'discrepancies:by_time', at, tid)
    redis.call('EXPIRE', D, ttl)
  end
  return 1
end

local applied = 0
for _, entry in ipairs(cjson.decode(ARGV[5])) do
  applied = applied + apply(entry)
end
return applied
"""


#: marks a caller number that was replaced by its hash before the event was spooled
HASHED: Final = "hmac-sha256:"


def caller_hash(number: str, key: bytes) -> str:
    """The keyed hash stored instead of a caller number: HMAC-SHA256, hex."""
    # surrogatepass: a number from a header with bytes that are not UTF-8 (surrogate escapes)
    # hashes too, always the same way; valid text encodes exactly as plain UTF-8
    return hmac.new(key, number.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class Recorder:
    """Feeds :class:`RecordEvent` s to Redis; see the module docstring and docs/records.md."""

    def __init__(self, config: Config, *, redis_url: str, hash_key: bytes | None) -> None:
        rc = config.records
        self.records = rc
        self.redis_url = redis_url
        self.hash_key = hash_key
        self.prefix = rc.key_prefix
        self.retention_s = max(1, int(rc.retention_days * 86400))
        self.queue: asyncio.Queue[RecordEvent] = asyncio.Queue(maxsize=max(1, rc.queue_size))
        self.spool: Spool | None = None
        #: events applied (first time) / found already applied (seen key present)
        self.applied = 0
        self.duplicates = 0
        self._up = False
        self._spooling = False  # later events go to the spool (it holds something)
        self._inflight: list[RecordEvent] = []  # taken from the queue, not yet confirmed
        self._dropped_early = 0  # submitted before start() with the queue full
        self._client: aioredis.Redis | None = None
        self._sha = hashlib.sha1(APPLY_LUA.encode()).hexdigest()
        dedup = min(self.retention_s, DEDUP_TTL)
        #: the script's ARGV before the batch: prefix, retention, stream cap, seen-key TTL
        self._argv = (self.prefix, str(self.retention_s), str(rc.stream_maxlen), str(dedup))
        self._tasks: list[asyncio.Task[None]] = []
        self._last_trim = 0.0
        self._down_seen = False  # a Redis failure has been seen since the last success

    # -- what the daemon reads ------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """The last Redis operation succeeded."""
        return self._up

    @property
    def spooled(self) -> int:
        """Events in the spool not yet in Redis."""
        return 0 if self.spool is None else self.spool.pending()

    @property
    def dropped(self) -> int:
        """Events lost to the spool's size cap (or a refusing disk)."""
        return self._dropped_early + (0 if self.spool is None else self.spool.dropped)

    # -- the SIP path ---------------------------------------------------------------------------

    def submit(self, ev: RecordEvent) -> None:
        """Record ``ev``. Never waits, never raises."""
        try:
            if not self._spooling:
                try:
                    self.queue.put_nowait(ev)
                    return
                except asyncio.QueueFull:
                    pass
            if self.spool is None:
                self._dropped_early += 1
                return
            self._spooling = True
            self.spool.append(self.redact(ev))
        except Exception:
            log.exception("recording an event failed")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start the writer; returns at once (no wait for Redis)."""
        rc = self.records
        self.spool = Spool(rc.spool_dir, fsync=rc.spool_fsync, max_bytes=rc.spool_max_bytes)
        if self.spool.torn:
            log.warning("spool: cut off a torn last line left by a killed process")
        if self.spool.pending():
            self._spooling = True  # what an earlier run left goes first
            log.info("spool: %d events to replay", self.spool.pending())
        self._tasks = [asyncio.create_task(self._writer(), name="records-writer")]
        if rc.spool_fsync == "batch":
            self._tasks.append(asyncio.create_task(self._syncer(), name="records-fsync"))

    async def stop(self, timeout: float) -> None:
        """Drain the queue (and the spool) to Redis within ``timeout`` seconds; whatever is not
        in Redis by then goes to the spool, which is fsynced and closed."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self._tasks and not self._tasks[0].done() and time.monotonic() < deadline:
            if self._idle() or self._down_seen:
                break  # all in Redis, or Redis is down: no use waiting
            await asyncio.sleep(0.01)
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        self._spill()  # in-flight batch and queue: to the spool, in order
        if self.spool is not None:
            self.spool.flush()
            self.spool.close()
        if self._client is not None:
            with contextlib.suppress(*FAILED):
                await self._client.aclose()
            self._client = None

    def _idle(self) -> bool:
        return self.queue.empty() and not self._inflight and self.spooled == 0

    # -- the writer -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                ok = await self._step()
            except Exception:
                log.exception("records writer: unexpected error, retrying")
                self._up = False
                self._failed("error")
                ok = False
            if ok:
                backoff = BACKOFF_MIN
            else:  # Redis down, or refusing the writes: wait before the next attempt
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    async def _step(self) -> bool:
        """One unit of work: connect, or one batch from the queue, or one from the spool, or
        wait for an event. False when Redis failed (the caller backs off)."""
        if not self._up and not await self._connect():
            self._failed("connect")
            return False
        if self._inflight or not self.queue.empty():
            batch = self._inflight or self._take()
            self._inflight = batch
            if not await self._apply(batch):
                self._failed("write")
                return False
            self._inflight = []
        elif self.spooled:
            assert self.spool is not None
            batch = self.spool.read_pending(BATCH)
            if batch and not await self._apply(batch):
                self._failed("replay")
                return False
            self.spool.ack(len(batch))
            if self.spool.pending() == 0 and self.queue.empty():
                self._spooling = False
                log.info("spool: replayed, writing to Redis directly again")
        else:
            self._spooling = False
            first = await self.queue.get()
            self._inflight = [first, *self._take(BATCH - 1)]
            return True
        await self._maybe_trim()
        return True

    def _take(self, limit: int = BATCH) -> list[RecordEvent]:
        out: list[RecordEvent] = []
        while len(out) < limit:
            try:
                out.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    def _failed(self, what: str) -> None:
        if self._up or not self._down_seen:
            log.warning("redis unreachable (%s): events go to the spool", what)
        self._up = False
        self._down_seen = True
        self._spill()

    def _spill(self) -> None:
        """Move the in-flight batch and the queue (older than anything spooled) to the spool."""
        events = [*self._inflight, *self._take(self.queue.qsize())]
        self._inflight = []
        if not events:
            return
        if self.spool is None:  # not started: nowhere to keep them
            self._dropped_early += len(events)
            return
        self._spooling = True
        if self.spool.pending():
            self.spool.push_front([self.redact(ev) for ev in events])
        else:
            for ev in events:
                self.spool.append(self.redact(ev))

    async def _connect(self) -> bool:
        if self._client is None:  # the first time: redis-py off the event loop, then a client
            await asyncio.to_thread(load_redis)
            self._client = new_client(self.redis_url)
        client = self._client
        try:
            await asyncio.wait_for(client.script_load(APPLY_LUA), OP_TIMEOUT)
        except FAILED:
            return False
        if self._down_seen:
            log.info("redis reachable again")
        self._up = True
        self._down_seen = False
        return True

    async def _apply(self, events: list[RecordEvent]) -> bool:
        """Apply ``events`` in one round trip, one script call; False when Redis failed (nothing
        is lost: every event of the batch is applied at most once, whatever part of it went
        through)."""
        client = self._client
        assert client is not None
        entries = [self.encode(ev) for ev in events]
        batch = utf8(json.dumps(entries, ensure_ascii=False, separators=(",", ":")))
        for attempt in (1, 2):
            try:
                done = await asyncio.wait_for(
                    client.evalsha(self._sha, 0, *self._argv, batch), OP_TIMEOUT
                )
            except _NO_SCRIPT:  # Redis restarted between connect and now
                if attempt == 2 or not await self._connect():
                    return False
                continue
            except FAILED as exc:
                log.debug("redis write failed: %r", exc)
                self._up = False
                return False
            self.applied += int(done)
            self.duplicates += len(events) - int(done)
            self._up = True
            return True
        return False

    def encode(self, ev: RecordEvent) -> list[str]:
        """``ev`` as the script takes it, ``[name, value, ...]``, with the PHI rule applied."""
        flat: list[str] = []
        for name, value in self.stored_fields(ev).items():
            flat += (name, str(value))
        return flat

    def stored_fields(self, ev: RecordEvent) -> dict[str, Any]:
        """``ev.fields()`` as stored (stream entry and hashes): caller number in clear only with
        ``store_caller_number``, else its keyed hash (none without a key); location only with
        ``store_location``."""
        fields = {n: v for n in _NAMES if (v := getattr(ev, n)) is not None}  # no deepcopy
        number = fields.pop("caller_number", None)
        location = fields.pop("location", None)
        if number is not None and number.startswith(HASHED):  # hashed before it was spooled
            fields["caller_hash"] = number.removeprefix(HASHED)
        elif number is not None:
            if self.records.store_caller_number:
                fields["caller_number"] = number
            elif self.hash_key:
                fields["caller_hash"] = caller_hash(number, self.hash_key)
        if location is not None and self.records.store_location:
            fields["location"] = location
        return fields

    def redact(self, ev: RecordEvent) -> RecordEvent:
        """``ev`` as it may be written to the local spool: the PHI rule applied already (the
        spool is storage too). A hashed caller number travels as ``HASHED + hex``."""
        number, location = ev.caller_number, ev.location
        if number is not None and not self.records.store_caller_number:
            if number.startswith(HASHED):
                pass
            elif self.hash_key:
                number = HASHED + caller_hash(number, self.hash_key)
            else:
                number = None
        if location is not None and not self.records.store_location:
            location = None
        if number is ev.caller_number and location is ev.location:
            return ev
        return replace(ev, caller_number=number, location=location)

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < TRIM_EVERY or self._client is None:
            return
        self._last_trim = now
        await self.trim()

    async def trim(self) -> None:
        """Drop by_time members older than the retention (their hashes have expired)."""
        client = self._client
        if client is None:
            return
        cutoff = int(time.time() * 1000) - self.retention_s * 1000
        p = self.prefix
        try:
            pipe = client.pipeline(transaction=False)
            for name in ("calls:by_time", "transfers:by_time", "discrepancies:by_time"):
                pipe.zremrangebyscore(f"{p}{name}", "-inf", f"({cutoff}")
            await asyncio.wait_for(pipe.execute(), OP_TIMEOUT)
        except FAILED:
            pass  # next time

    async def _syncer(self) -> None:
        """``batch`` policy: fsync the spool off the event loop at most every 0.2 s."""
        while True:
            await asyncio.sleep(BATCH_INTERVAL)
            spool = self.spool
            if spool is None or not spool.sync_due():
                continue
            fd = spool.dup_for_sync()
            if fd is not None:
                await asyncio.to_thread(_fsync_close, fd)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
