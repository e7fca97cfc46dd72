"""``handoffd``: wires config, SIP stack, call layer, media relay and HTTP API together.

The only module besides ``telephony/io`` that owns the event loop: it feeds SIP events and the
call layer's timers into :class:`~telephony.call.b2bua.B2bua`, adapts the media relay to the call
layer's :class:`~telephony.call.ports.MediaPort`, serves the HTTP API, drains on SIGTERM and
reloads the routing rules on SIGHUP.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from telephony import logs, native
from telephony.api import create_app
from telephony.api.control import ControlError, TransferRequest
from telephony.call.b2bua import B2bua, Call
from telephony.call.ports import MediaLeg
from telephony.call.probe import Prober
from telephony.call.transfer import Transfer
from telephony.collector import Collector
from telephony.config import Config
from telephony.io.stack import SipStack, WakeUp, install_uvloop
from telephony.media.dtmf import DigitDetector
from telephony.media.ports import PortAllocator
from telephony.media.relay import LegEndpoint, Relay
from telephony.observe import Observer
from telephony.registrations import BindingStore
from telephony.routing import RulesError, load_rules
from telephony.sip.errors import SipError
from telephony.sip.transaction import Endpoint, Event, TimerConfig

if TYPE_CHECKING:
    from telephony.media.conference import Conference  # imported when needed: MIXER_MODULE

log = logging.getLogger("telephony.daemon")

#: Imported after the daemon serves, in a worker thread (numpy and its tables take ~0.2 s
#: here): only conferences need it, and the event loop keeps its turns while the thread runs.
#: A conference asked for before it finished waits for the import (Python's import lock).
MIXER_MODULE = "telephony.media.conference"


class RelayMedia:
    """The call layer's :class:`MediaPort` over the RTP relay."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.conferences: dict[str, Conference] = {}
        self._mixed: dict[LegEndpoint, Conference] = {}
        #: where watched keys go (the daemon: into the call layer with the time)
        self.on_key: Callable[[str, str], None] | None = None

    def open(self, label: str) -> MediaLeg:
        return self.relay.open_endpoint_nowait(label)

    def bridge(self, a: MediaLeg, b: MediaLeg) -> None:
        ea, eb = _endpoint(a), _endpoint(b)
        for ep in (ea, eb):
            self._unmix_one(ep)
            if ep.bridge is not None:
                ep.bridge.unbridge()
        if ea.closed or eb.closed:
            return
        self.relay.bridge(ea, eb)

    def unbridge(self, leg: MediaLeg) -> None:
        ep = _endpoint(leg)
        self._unmix_one(ep)
        if ep.bridge is not None:
            ep.bridge.unbridge()

    def mix(self, key: str, legs: Sequence[tuple[MediaLeg, int, int | None]]) -> None:
        conf = self.conferences.get(key)
        if conf is None:
            from telephony.media.conference import Conference  # noqa: PLC0415 (MIXER_MODULE)

            conf = self.conferences[key] = Conference(key)
        wanted = {_endpoint(leg): (codec, event) for leg, codec, event in legs}
        for ep in conf.endpoints:
            if ep not in wanted:
                self._unmix_one(ep)
        for ep, (codec, event) in wanted.items():
            if ep.closed:
                continue
            if self._mixed.get(ep) is conf:
                conf.set_mode(ep, hold_tone=False)  # e.g. the held caller joins the conference
                continue
            self._unmix_one(ep)
            conf.add(ep, codec=codec, event_pt=event)
            self._mixed[ep] = conf

    def unmix(self, key: str) -> None:
        conf = self.conferences.pop(key, None)
        if conf is not None:
            for ep in conf.close():
                self._mixed.pop(ep, None)

    def hold(self, key: str, leg: MediaLeg, codec: int, event_pt: int | None) -> None:
        ep = _endpoint(leg)
        self.mix(key, [(ep, codec, event_pt)])
        conf = self.conferences[key]
        if not ep.closed:
            conf.set_mode(ep, hold_tone=True)

    def watch_keys(self, leg: MediaLeg, payload_type: int, key: str) -> None:
        detector = DigitDetector(payload_type)

        def watch(packet: bytes) -> None:
            pressed = detector.feed(packet)
            if pressed is not None and self.on_key is not None:
                self.on_key(key, pressed)

        _endpoint(leg).set_watch(payload_type, watch)

    def _unmix_one(self, ep: LegEndpoint) -> None:
        conf = self._mixed.pop(ep, None)
        if conf is not None:
            conf.remove(ep)


def _endpoint(leg: MediaLeg) -> LegEndpoint:
    assert isinstance(leg, LegEndpoint)
    return leg


class Daemon:
    """One handoffd process. ``await start()``, then ``await serve_forever()``."""

    def __init__(self, config: Config, *, collector: Collector | None = None) -> None:
        self.config = config
        #: the process's collector policy (``main`` installs it; in-process tests have none)
        self.collector = collector
        self.rules = load_rules(config.rules, trunks=tuple(config.trunks))
        sip = config.sip
        self.stack = SipStack(self._on_event, TimerConfig(sip.t1, sip.t2, sip.t4))
        media = config.media
        self.relay = Relay(
            PortAllocator(media.host, media.port_min, media.port_max),
            latch=media.latch,
            keep_open=media.keep_open,
        )
        self.observer = Observer(config, redis_url=config.redis_url)
        self.core: B2bua | None = None
        self.prober: Prober | None = None
        self._wake = WakeUp(self._on_timer, asyncio.get_running_loop)
        self._busy = False
        self._queue: list[Event] = []
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._preload: asyncio.Future[Any] | None = None
        self.bindings: BindingStore | None = None  # registrations kept in Redis
        self.ready = False
        self.http_port = 0
        self.sip_endpoints: list[Endpoint] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (SIP, then HTTP) and start the workers. When a step fails (a port in use),
        what was opened is closed again before the error goes up."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        for ls in self.config.sip.listen:
            self.sip_endpoints.append(await self.stack.listen(ls.transport, ls.host, ls.port))
        local = {ep.transport: ep for ep in reversed(self.sip_endpoints)}
        media = RelayMedia(self.relay)
        media.on_key = self._on_key
        self.core = B2bua(
            self.stack,
            media,
            self.config,
            self.rules,
            local=local,
            wall_offset=time.time() - loop.time(),
        )
        self.observer.attach(self.core, self.stack, self.relay)
        await self.observer.start()  # returns at once even when Redis is down (spooling)
        self.prober = Prober(self.core, self.config.probe)
        self.prober.start(self.rules, loop.time())
        app = create_app(_Control(self), tokens=self._tokens, metrics=self.observer.metrics.handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        self._kick()
        if self.collector is not None:
            self.collector.drive(loop, idle=lambda: self.core is None or not self.core.calls)
        self.ready = True
        self._preload = loop.run_in_executor(None, importlib.import_module, MIXER_MODULE)
        if self.config.registrar.store and self.core.registrar.machine.positions:
            self.bindings = BindingStore(self.config.redis_url, self.config.records.key_prefix)
            self.bindings.attach(self.core.registrar, self.call_core)
        log.info(
            "handoffd serving SIP on %s, HTTP on %s:%d (SIP and call layers %s)",
            ", ".join(f"{e.transport}:{e.host}:{e.port}" for e in self.sip_endpoints),
            self.config.http.host,
            self.http_port,
            native.status(),
        )

    def _tokens(self) -> Collection[str]:
        return self.config.http.tokens

    async def drain(self) -> None:
        """SIGTERM: refuse new calls (503 + Retry-After), let active calls finish up to the
        drain timeout, then stop."""
        core = self.core
        if core is None or core.draining:
            return
        core.draining = True
        self.ready = False
        log.info("draining: %d active calls", len(core.calls))
        deadline = asyncio.get_running_loop().time() + self.config.drain_timeout
        while core.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.ready = False
        self._wake.cancel()
        if self.collector is not None:
            self.collector.stop()
        if self.bindings is not None:
            await self.bindings.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.stack.close()
        await self.relay.wait_closed()
        await self.observer.stop()  # flushes to Redis, or to the spool within 5 s
        self._stopped.set()

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def reload_rules(self) -> dict[str, Any]:
        """SIGHUP and POST /v1/admin/reload: swap in new rules, or keep the old ones."""
        try:
            rules = load_rules(self.config.rules, trunks=tuple(self.config.trunks))
        except RulesError:
            self.observer.metrics.rules_reloaded(ok=False)
            raise
        self.observer.metrics.rules_reloaded(ok=True)
        self.rules = rules
        if self.core is not None:
            self.core.rules = rules
        if self.prober is not None:
            self.prober.start(rules, asyncio.get_running_loop().time())
            self._kick()
        log.info("routing rules reloaded: %d rules", len(rules.rules))
        return {"rules": len(rules.rules), "sources": list(rules.sources)}

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self.drain()))
        loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(self.drain()))
        loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def _sighup(self) -> None:
        try:
            self.reload_rules()
        except RulesError as err:
            log.error("rules not reloaded, the running rules stay:\n%s", err)

    # -- driving the call layer -------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if self._busy:  # a send inside the core produced an event: handle it afterwards
            self._queue.append(ev)
            return
        core = self.core
        if core is None:
            return
        self.call_core(core.handle, ev, self.stack.now())

    def _on_key(self, call_id: str, pressed: str) -> None:
        """A key the dispatcher pressed (from the relay's datagram callback)."""
        assert self.core is not None
        try:
            self.call_core(self.core.on_key, call_id, pressed, self.stack.now())
        except Exception:  # never into the RTP socket's callback (it would close the socket)
            log.exception("feature code handling failed", extra={"call_id": call_id})

    def call_core(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` (a core method) as the event handler would: no re-entry, timers kept."""
        self._busy = True
        try:
            result = fn(*args, **kwargs)
            assert self.core is not None
            while self._queue:
                self.core.handle(self._queue.pop(0), self.stack.now())
        finally:
            self._busy = False
        self._kick()
        return result

    def _kick(self) -> None:
        core = self.core
        self._wake.want(None if core is None else core.get_timer())

    def _on_timer(self) -> None:
        if self.core is not None:
            self.call_core(self.core.handle_timer, self.stack.now())


class _Control:
    """The HTTP API's view of the daemon (``telephony.api.control.CallControl``)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    @property
    def core(self) -> B2bua:
        if self.d.core is None:
            raise ControlError(503, "not started")
        return self.d.core

    def ready(self) -> bool:
        return self.d.ready

    def list_calls(self) -> list[dict[str, Any]]:
        return [call_view(c) for c in self.core.calls.values()]

    def get_call(self, call_id: str) -> dict[str, Any]:
        call = self.core.find_call(call_id)
        if call is None:
            raise ControlError(404, f"no call {call_id!r}", code="unknown_call")
        return call_view(call)

    def start_transfer(self, call_id: str, request: TransferRequest) -> dict[str, Any]:
        core = self.core
        try:
            t = self.d.call_core(
                core.cold.start_transfer,
                call_id,
                destination=request.destination,
                triage=request.triage_level,
                reason=request.reason,
                mode=request.mode,
                now=self.d.stack.now(),
            )
        except SipError as err:
            raise _control_error(err) from None
        return transfer_view(t)

    def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        t = self.core.transfers.get(transfer_id)
        if t is None:
            raise ControlError(404, f"no transfer {transfer_id!r}", code="unknown_transfer")
        return transfer_view(t)

    def cancel_transfer(self, transfer_id: str) -> dict[str, Any]:
        core = self.core
        try:
            t = self.d.call_core(core.cold.cancel_transfer, transfer_id, now=self.d.stack.now())
        except SipError as err:
            raise _control_error(err) from None
        return transfer_view(t)

    def complete_transfer(self, transfer_id: str) -> dict[str, Any]:
        core = self.core
        try:
            t = self.d.call_core(core.warm.complete, transfer_id, now=self.d.stack.now())
        except SipError as err:
            raise _control_error(err) from None
        return transfer_view(t)

    def conference_transfer(self, transfer_id: str) -> dict[str, Any]:
        core = self.core
        try:
            t = self.d.call_core(core.warm.conference, transfer_id, now=self.d.stack.now())
        except SipError as err:
            raise _control_error(err) from None
        return transfer_view(t)

    def reload_rules(self) -> dict[str, Any]:
        try:
            return self.d.reload_rules()
        except RulesError as err:
            raise ControlError(422, str(err), code="bad_rules") from None


def _control_error(err: SipError) -> ControlError:
    status = err.status if err.status in (403, 404, 409, 422) else 503
    field = "destination" if err.status == 403 else None
    return ControlError(status, err.reason, field=field)


def call_view(call: Call) -> dict[str, Any]:
    meta = call.meta
    return {
        "id": call.id,
        "state": call.state,
        "trunk": call.trunk.name,
        "psap_id": call.trunk.psap_id,
        "position": call.position.name if call.position is not None else None,
        "emergency_call_id": meta.emergency_call_id,
        "incident_id": meta.incident_id,
        "created_at": call.created_at,
        "transfer_id": call.transfer.id if call.transfer is not None else None,
        "legs": [
            {
                "role": leg.role,
                "sip_call_id": leg.sip_call_id,
                "state": leg.state.value,
                "peer": f"{leg.dest.transport}:{leg.dest.host}:{leg.dest.port}",
            }
            for leg in call.legs
        ],
    }


def transfer_view(t: Transfer) -> dict[str, Any]:
    dest = t.destination
    return {
        "id": t.id,
        "call_id": t.call_id,
        "mode": t.mode,
        "state": t.state.value,
        "trigger": t.trigger,
        "destination": dest.label if dest is not None else None,
        "triage_level": t.triage_level,
        "reason": t.reason,
        "rule": t.decision.rule,
        "dispatcher_stays": t.decision.dispatcher_stays,
        "outcome": t.outcome,
        "sip_status": t.sip_status,
        "timeline": [
            {"event": e.event, "at": e.at, "destination": e.destination, "sip_status": e.sip_status}
            for e in t.timeline
        ],
    }


async def run(config: Config, collector: Collector | None = None) -> int:
    """Run until SIGTERM/SIGINT has drained the daemon."""
    daemon = Daemon(config, collector=collector)
    await daemon.start()
    daemon.install_signals()
    await daemon.serve_forever()
    return 0


def main(config: Config) -> int:
    logs.configure(config.log_level, phi=config.log_phi)
    install_uvloop()
    # The collector was off while modules were imported (handoffd_main); what they left is
    # frozen with the rest (no full pass at startup: ~0.1 s); then young passes only, survivors
    # frozen, a full pass when idle (telephony/collector.py).
    collector = Collector()
    collector.install()
    return asyncio.run(run(config, collector))
