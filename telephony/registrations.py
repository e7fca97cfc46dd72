"""Softphone registrations kept in Redis, so a restart of handoffd does not lose them.

Without this, a restarted handoffd knows no registered phone until each registers again, which
a phone does only when about half its registration has run (up to ``registrar.max_expires``):
calls to those positions would go to their ``uri`` or be refused meanwhile. The store:

- **writes** a position's bindings whenever they change (registered, refreshed, removed,
  expired): one key per position, ``<records.key_prefix>registrations:<position>``, a JSON list
  of its bindings with their wall-clock expiry in ms, expiring itself with the last binding
  (``PEXPIREAT``); no binding left deletes the key. Writes are behind the SIP path: a change
  only marks the position, a task writes the latest state of every marked position; while
  Redis is down the marks wait and are written when it returns (no spool: a phone registering
  again brings the same facts). Nothing on the SIP path waits for Redis.
- **reads** the keys of every position with credentials once at start, after the daemon
  serves: what is not expired and not registered again meanwhile is taken back
  (``Registrar.restore``), reachable until its first qualify, a second later, says otherwise.
  Redis down at start: nothing is restored (logged), the phones come back as they register.

What is stored: the Contact as registered, where the REGISTER came from (transport, host,
port), its Call-ID and CSeq, q and the expiry; no password, nonce or caller data. Several
instances sharing one Redis would share these keys; only one writer per position is expected
today (docs/registrar.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from telephony.call.registrar import Binding
from telephony.recording import store as records_store
from telephony.sip.errors import SipError
from telephony.sip.headers import parse_name_addr
from telephony.sip.transaction import Endpoint
from telephony.tasks import cancel_and_wait

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from telephony.call.positions import PositionRegistrar

log = logging.getLogger("telephony.registrar")

#: seconds between attempts while Redis is down
RETRY_S = 2.0


def to_json(b: Binding, wall_offset: float) -> dict[str, Any]:
    """One binding as stored. ``wall_offset``: wall clock minus the registrar's clock."""
    src = b.source
    return {
        "contact": str(b.contact),
        "source": [src.transport, src.host, src.port],
        "call_id": b.call_id,
        "cseq": b.cseq,
        "q": b.q,
        "expires_ms": int((b.expires_at + wall_offset) * 1000),
    }


def from_json(position: str, item: Any, wall_offset: float) -> Binding:
    """A stored binding of ``position`` back; its id and state are set by
    ``Registrar.restore``. Raises ValueError when ``item`` is not one."""
    try:
        transport, host, port = item["source"]
        return Binding(
            0,
            position,
            parse_name_addr(str(item["contact"])),
            Endpoint(str(transport), str(host), int(port)),
            str(item["call_id"]),
            int(item["cseq"]),
            int(item["expires_ms"]) / 1000 - wall_offset,
            0.0,
            float(item["q"]),
        )
    except (ValueError, KeyError, TypeError, IndexError, SipError) as err:
        raise ValueError(f"not a stored binding: {err}") from None


def decode(position: str, raw: str | bytes, wall_offset: float) -> list[Binding]:
    """A position's stored value back into bindings; ValueError when any part is unusable."""
    items = json.loads(raw)
    if not isinstance(items, list):
        raise ValueError("not a list of bindings")
    return [from_json(position, item, wall_offset) for item in items]


class BindingStore:
    """Writes and reads the registrar's bindings; see the module docstring."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = f"{prefix}registrations:"
        self.registrar: PositionRegistrar | None = None
        self.restored = 0  # bindings taken back at start
        self.written = 0  # keys written (or deleted)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._call_core: Callable[..., Any] = lambda fn, *args: fn(*args)
        self._down = False  # the last write failed

    def attach(self, registrar: PositionRegistrar, call_core: Callable[..., Any]) -> None:
        """Follow ``registrar`` (its ``on_change``) and start: read back, then write changes.
        ``call_core(fn, *args)`` runs ``fn`` as the daemon runs the call layer (its timers
        rescheduled afterwards)."""
        self.registrar = registrar
        self._call_core = call_core
        registrar.on_change = self.changed
        self._task = asyncio.create_task(self._run(), name="registrations")

    def changed(self, position: str) -> None:
        """``position``'s bindings changed: store them soon. Never waits."""
        self._dirty.add(position)
        self._wake.set()

    async def stop(self, timeout: float = 2.0) -> None:
        """Write what is still marked (within ``timeout`` s), then close."""
        task, self._task = self._task, None
        if task is not None:
            if self._dirty and self._client is not None:
                try:
                    await asyncio.wait_for(self._write_all(), timeout)
                except records_store.FAILED:
                    log.warning("registrations: %d positions not stored", len(self._dirty))
            await cancel_and_wait(task)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the task -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await asyncio.to_thread(records_store.load_redis)
            self._client = records_store.new_client(self.redis_url)
            await self._restore()
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self._write_all()
                except records_store.FAILED as err:
                    if not self._down:  # once per outage, not at every retry
                        log.warning("registrations: not stored while Redis fails: %s", err)
                    self._down = True
                    self._wake.set()
                    await asyncio.sleep(RETRY_S)
                    continue
                if self._down:
                    log.info("registrations: stored again")
                self._down = False
        except asyncio.CancelledError:
            raise
        except Exception:  # never let the SIP side see this
            log.exception("registrations: the store stopped")

    async def _restore(self) -> None:
        reg = self.registrar
        assert reg is not None and self._client is not None
        names = sorted(reg.machine.positions)
        if not names:
            return
        try:
            values = await self._client.mget([self.prefix + n for n in names])
        except records_store.FAILED as err:
            log.warning("registrations: none restored, Redis: %s", err)
            return
        core = reg.core
        offset = core.wall - core.now
        kept: list[Binding] = []
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                continue
            try:
                kept.extend(decode(name, raw, offset))
            except ValueError as err:  # json's errors are ValueErrors too
                log.warning("registrations: stored bindings of %s unusable: %s", name, err)
        # the loop's clock, the call layer's time base (``core.now`` is the last event's time)
        now = asyncio.get_running_loop().time()
        self.restored = self._call_core(reg.machine.restore, kept, now)
        if kept:
            log.info("registrations: %d of %d stored bindings restored", self.restored, len(kept))
        self._dirty.update(names)  # what was not taken back leaves the store too
        self._wake.set()

    async def _write_all(self) -> None:
        reg = self.registrar
        client = self._client
        assert reg is not None and client is not None
        core = reg.core
        while self._dirty:
            name = next(iter(self._dirty))
            self._dirty.discard(name)
            offset = core.wall - core.now
            items = [to_json(b, offset) for b in reg.machine.live(name)]
            key = self.prefix + name
            try:
                if items:
                    until = max(i["expires_ms"] for i in items)
                    pipe = client.pipeline(transaction=True)
                    pipe.set(key, json.dumps(items, separators=(",", ":")))
                    pipe.pexpireat(key, until)
                    await asyncio.wait_for(pipe.execute(), records_store.OP_TIMEOUT)
                else:
                    await asyncio.wait_for(client.delete(key), records_store.OP_TIMEOUT)
            except BaseException:
                self._dirty.add(name)  # written next time
                raise
            self.written += 1
