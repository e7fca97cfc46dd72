"""The registrar's place in the controller (:class:`~telephony.call.b2bua.B2bua` owns one
:class:`PositionRegistrar` as ``core.registrar``).

It answers REGISTER through the controller's SIP port, sends the qualify OPTIONS, logs what
happened and says where a position's INVITE goes (:meth:`PositionRegistrar.route`): the best
reachable registered contact, else the configured ``uri``, else nowhere (480). A registered
contact is called with the contact as Request-URI but sent to the **source address and transport
of the REGISTER**: behind NAT that is the address the phone's router forwards (docs/registrar.md
explains the choice). The machine itself is :class:`~telephony.call.registrar.Registrar`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, NamedTuple

from telephony.call.legs import endpoint_for
from telephony.call.registrar import (
    ContactReachable,
    ContactRefreshed,
    ContactRegistered,
    ContactRemoved,
    ContactUnreachable,
    QualifyDue,
    RegisterRejected,
    Registrar,
    RegistrarEvent,
)
from telephony.sip.errors import SipError
from telephony.sip.headers import NameAddr, new_tag
from telephony.sip.message import Request, Response, make_request, make_response
from telephony.sip.transaction import Endpoint
from telephony.sip.uri import URI

if TYPE_CHECKING:
    from telephony.call.b2bua import B2bua
    from telephony.config import Position

log = logging.getLogger("telephony.registrar")


class Route(NamedTuple):
    """Where an INVITE for a position goes: its Request-URI and transport destination;
    ``registered`` when that is a phone's binding (``dest`` is then where it registered from)."""

    uri: URI
    dest: Endpoint
    registered: bool


class PositionRegistrar:
    """The registrar inside the controller: answers REGISTER, qualifies contacts, routes calls.

    The controller calls :meth:`on_register` for every REGISTER, :meth:`route` when it dials a
    position, and folds :meth:`get_timer` / :meth:`handle_timer` into its own.
    """

    def __init__(self, core: B2bua, *, secret: bytes | None = None) -> None:
        self.core = core
        self.machine = Registrar(core.config.registrar, core.config.positions, secret=secret)
        #: told the position's name whenever its bindings change (the daemon stores them)
        self.on_change: Callable[[str], None] | None = None

    def on_register(self, request: Request, source: Endpoint) -> None:
        core = self.core
        reply = self.machine.register(request, source, core.now)
        headers = reply.headers
        if reply.status == 200:
            headers = (*headers, ("Date", formatdate(core.wall, usegmt=True)))
        response = make_response(request, reply.status, to_tag=new_tag(), headers=headers)
        core.sip.send_response(response)
        self._drain()

    def route(self, position: Position) -> Route:
        """Where an INVITE for ``position`` goes: (Request-URI, transport destination). Raises
        :class:`SipError` 480 when it has neither a reachable registration nor a ``uri``."""
        found = self.machine.target(position.name, self.core.now)
        if found is not None:
            return Route(*found, registered=True)
        if position.uri is not None:
            return Route(position.uri, endpoint_for(position.uri, position.transport), False)
        raise SipError(f"position {position.name} is not registered", 480, "local")

    def available(self, position: Position) -> bool:
        found = self.machine.target(position.name, self.core.now)
        return position.uri is not None or found is not None

    def get_timer(self) -> float | None:
        return self.machine.get_timer()

    def handle_timer(self, now: float) -> None:
        self.machine.handle_timer(now)
        self._drain()

    def _drain(self) -> None:
        for ev in self.machine.events():
            if isinstance(ev, QualifyDue):
                self._qualify(ev)
                continue
            _log(ev)
            if self.on_change is not None and isinstance(
                ev, ContactRegistered | ContactRefreshed | ContactRemoved
            ):
                self.on_change(ev.position)

    def _qualify(self, due: QualifyDue) -> None:
        core = self.core
        me = core._contact(due.dest.transport)
        request = make_request(
            "OPTIONS",
            due.uri,
            via=core._via(due.dest.transport),
            from_=NameAddr(me.uri, None, (("tag", new_tag()),)),
            to=NameAddr(due.uri),
            call_id=f"qualify-{new_tag()}{new_tag()}@handoffd",
            cseq=1,
            headers=(("Accept", "application/sdp"),),
        )

        def answered(resp: Response) -> None:
            self.machine.qualify_result(due.binding, due.seq, resp.status)
            self._drain()

        core._send(request, due.dest, answered)


def _log(ev: RegistrarEvent) -> None:
    """One log line per event: contacts and sources of phones, never anything about a call."""
    if isinstance(ev, ContactRegistered | ContactRefreshed):
        new = isinstance(ev, ContactRegistered)
        src, how = ev.source, "registered" if new else "refreshed"
        where = f"{src.transport}:{src.host}:{src.port}"
        level, msg = logging.INFO if new else logging.DEBUG, "registrar: %s %s %s from %s for %d s"
        log.log(level, msg, ev.position, how, ev.contact, where, ev.expires)
    elif isinstance(ev, ContactRemoved):
        log.info("registrar: %s contact %s removed (%s)", ev.position, ev.contact, ev.reason)
    elif isinstance(ev, ContactUnreachable):
        log.warning("registrar: %s contact %s stopped answering OPTIONS", ev.position, ev.contact)
    elif isinstance(ev, ContactReachable):
        log.info("registrar: %s contact %s answers again", ev.position, ev.contact)
    elif isinstance(ev, RegisterRejected):
        src, level = ev.source, logging.DEBUG if ev.status == 401 else logging.INFO
        where = f"{src.transport}:{src.host}:{src.port}"
        msg = "registrar: REGISTER from %s (user %r) answered %d (%s)"
        log.log(level, msg, where, ev.username, ev.status, ev.detail)
