"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §13.3.1.4, §15), sans-IO.

A :class:`Dialog` holds what RFC 3261 §12 says a dialog is (Call-ID, tags, CSeqs, local and remote
URI, remote target, route set, secure flag) and builds in-dialog requests from it. Its state moves
by one transition table (:data:`DIALOG_TABLE`); an unlisted (state, input) pair is a
:class:`ProtocolError`. :class:`DialogTable` finds the dialog a message belongs to, including the
several early dialogs a forked INVITE creates. :class:`Uas2xxRetransmitter` is the UAS core's job
under RFC 6026: retransmit a 2xx to INVITE (T1, doubling, capped at T2) until its ACK arrives or
64*T1 pass. Time is always an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from telephony.sip.errors import ProtocolError
from telephony.sip.headers import NameAddr, Via, new_branch
from telephony.sip.message import Request, Response, make_request
from telephony.sip.uri import URI

# Methods whose requests and 2xx responses refresh the remote target (RFC 3261 §12.2, RFC 3311,
# RFC 6665, RFC 3515).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


D = DialogState
# input names: "1xx" (provisional with To tag), "2xx", "failure" (3xx-6xx to the INVITE),
# "bye" (sent or received), "ack_timeout" (no ACK for our 2xx), "request" (any other in-dialog
# request), "refresh" (a target-refreshing request or its 2xx)
DIALOG_TABLE: dict[tuple[DialogState, str], DialogState] = {
    (D.EARLY, "1xx"): D.EARLY,
    (D.EARLY, "2xx"): D.CONFIRMED,
    (D.EARLY, "failure"): D.TERMINATED,
    (D.EARLY, "bye"): D.TERMINATED,
    (D.EARLY, "refresh"): D.EARLY,
    (D.EARLY, "request"): D.EARLY,
    (D.CONFIRMED, "1xx"): D.CONFIRMED,
    (D.CONFIRMED, "2xx"): D.CONFIRMED,
    (D.CONFIRMED, "failure"): D.CONFIRMED,  # a failed re-INVITE leaves the dialog (§14.1)
    (D.CONFIRMED, "bye"): D.TERMINATED,
    (D.CONFIRMED, "ack_timeout"): D.TERMINATED,
    (D.CONFIRMED, "refresh"): D.CONFIRMED,
    (D.CONFIRMED, "request"): D.CONFIRMED,
}

DialogKey = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


def _remote_target(msg: Request | Response) -> URI:
    contacts = msg.contact
    if not contacts:
        raise ProtocolError("dialog-creating message without Contact", status=400)
    return contacts[0].uri


@dataclass
class Dialog:
    """One dialog, seen from our side. ``role`` is ``"uac"`` when we sent the INVITE."""

    role: str
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddr  # our From (UAC) / To (UAS), without tag
    remote_uri: NameAddr
    remote_target: URI
    route_set: tuple[NameAddr, ...]
    local_seq: int
    remote_seq: int | None
    secure: bool
    local_contact: NameAddr | None = None
    state: DialogState = DialogState.EARLY

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def from_uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 1xx (with To tag) or 2xx to our ``invite`` creates (§12.1.2)."""
        tag = response.to.tag
        if not tag or not 100 < response.status < 300:
            raise ProtocolError("response does not create a dialog", status=400)
        return cls(
            role="uac",
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=tag,
            local_uri=invite.from_._replace(params=()),
            remote_uri=invite.to._replace(params=()),
            remote_target=_remote_target(response),
            route_set=tuple(reversed(response.record_route)),
            local_seq=invite.cseq.seq,
            remote_seq=None,
            secure=invite.uri.scheme == "sips",
            local_contact=invite.contact[0] if invite.contact else None,
            state=D.CONFIRMED if response.status >= 200 else D.EARLY,
        )

    @classmethod
    def from_uas(
        cls, invite: Request, local_tag: str, local_contact: NameAddr, *, confirmed: bool = False
    ) -> Dialog:
        """The dialog our 1xx (early) or 2xx (``confirmed=True``) to ``invite`` creates
        (§12.1.1). The caller puts ``local_tag`` on the To and ``local_contact`` in Contact."""
        return cls(
            role="uas",
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_uri=invite.to._replace(params=()),
            remote_uri=invite.from_._replace(params=()),
            remote_target=_remote_target(invite),
            route_set=tuple(invite.record_route),
            local_seq=0,
            remote_seq=invite.cseq.seq,
            secure=invite.uri.scheme == "sips",
            local_contact=local_contact,
            state=D.CONFIRMED if confirmed else D.EARLY,
        )

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.local_tag, self.remote_tag)

    def _step(self, event: str) -> None:
        try:
            self.state = DIALOG_TABLE[(self.state, event)]
        except KeyError:
            raise ProtocolError(
                f"dialog: {event} not allowed in {self.state.value}", status=481
            ) from None

    # -- updates from messages --------------------------------------------------------------

    def on_response(self, request: Request, response: Response) -> None:
        """A response to a request we sent in this dialog (or to the dialog-creating INVITE)."""
        status = response.status
        if status < 200:
            if response.to.tag and request.method == "INVITE":
                self._step("1xx")
                if self.state is D.EARLY and response.contact:
                    self.remote_target = response.contact[0].uri
            return
        if status < 300:
            was_early = self.state is D.EARLY
            self._step("2xx" if request.method == "INVITE" else "refresh")
            if request.method in TARGET_REFRESH and response.contact:
                self.remote_target = response.contact[0].uri
            if was_early and self.role == "uac" and request.method == "INVITE":
                # the route set is fixed when the dialog is confirmed (§13.2.2.4)
                self.route_set = tuple(reversed(response.record_route))
            return
        if request.method == "INVITE":
            self._step("failure")
        elif status in (408, 481):
            self._step("bye")  # the dialog is gone on the far side (§12.2.1.2)

    def on_request(self, request: Request) -> None:
        """Validate and absorb an in-dialog request from the peer (§12.2.2). Raises
        :class:`ProtocolError` 500 for a CSeq lower than the last one."""
        method = request.method
        if method in ("ACK", "CANCEL"):
            return  # ACK and CANCEL carry the INVITE's CSeq; not a new remote sequence
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            raise ProtocolError("CSeq out of order", status=500)
        self.remote_seq = seq
        if method == "BYE":
            self._step("bye")
        elif method in TARGET_REFRESH:
            self._step("refresh")
            if request.contact:
                self.remote_target = request.contact[0].uri
        else:
            self._step("request")

    def ack_timed_out(self) -> None:
        """Our 2xx was never ACKed: the dialog ends (the core sends BYE, §13.3.1.4)."""
        self._step("ack_timeout")

    def terminate(self) -> None:
        self.state = D.TERMINATED

    # -- building requests ------------------------------------------------------------------

    def _routing(self) -> tuple[URI, tuple[NameAddr, ...]]:
        """Request-URI and Route headers per §12.2.1.1 (loose and strict routing)."""
        routes = self.route_set
        if not routes or routes[0].uri.has_param("lr"):
            return self.remote_target, routes
        # strict router: it takes the Request-URI; the remote target goes last in Route
        return routes[0].uri, (*routes[1:], NameAddr(self.remote_target))

    def next_hop(self) -> URI:
        """Where to send an in-dialog request: the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def create_request(
        self,
        method: str,
        via: Via,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new in-dialog request with the next local CSeq. ``via`` names our sent-by; a fresh
        branch is put on it."""
        if method in ("ACK", "CANCEL"):
            raise ProtocolError(f"{method} is not built with create_request", status=500)
        if self.state is D.TERMINATED:
            raise ProtocolError("dialog terminated", status=481)
        self.local_seq += 1
        return self._build(
            method, self.local_seq, via, headers=headers, body=body, ctype=content_type
        )

    def create_ack(
        self,
        invite_cseq: int,
        via: Via,
        *,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE with CSeq ``invite_cseq`` (§13.2.2.4)."""
        return self._build("ACK", invite_cseq, via, body=body, ctype=content_type)

    def _build(
        self,
        method: str,
        seq: int,
        via: Via,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        ctype: str | None = None,
    ) -> Request:
        uri, routes = self._routing()
        contact = self.local_contact if method in TARGET_REFRESH else None
        return make_request(
            method,
            uri,
            via=via.with_param("branch", new_branch()),
            from_=self.local_uri.with_tag(self.local_tag),
            to=self.remote_uri.with_tag(self.remote_tag),
            call_id=self.call_id,
            cseq=seq,
            contact=contact,
            route=routes,
            headers=headers,
            body=body,
            content_type=ctype,
        )


@dataclass
class DialogTable:
    """Dialogs by key; early dialogs of a forked INVITE share Call-ID and local tag."""

    dialogs: dict[DialogKey, Dialog] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dialogs)

    def add(self, dialog: Dialog) -> None:
        self.dialogs[dialog.key] = dialog

    def remove(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.key, None)

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog an incoming request belongs to (its To tag is our local tag)."""
        to_tag = request.to.tag
        if not to_tag:
            return None
        return self.dialogs.get((request.call_id, to_tag, request.from_.tag or ""))

    def for_response(self, response: Response) -> Dialog | None:
        """The dialog a response to our request belongs to (its From tag is our local tag)."""
        to_tag = response.to.tag
        if not to_tag:
            return None
        return self.dialogs.get((response.call_id, response.from_.tag or "", to_tag))

    def early(self, call_id: str, local_tag: str) -> list[Dialog]:
        """Every early dialog of one of our INVITEs (one per fork that answered)."""
        return [
            d
            for (cid, tag, _), d in self.dialogs.items()
            if cid == call_id and tag == local_tag and d.state is D.EARLY
        ]


@dataclass(frozen=True, slots=True)
class Retransmit2xx:
    """Send the 2xx again (same bytes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """No ACK for our 2xx within 64*T1: confirm and then end the dialog with BYE (§13.3.1.4)."""

    dialog_key: DialogKey


class Uas2xxRetransmitter:
    """Retransmits one 2xx to INVITE until ACKed (RFC 3261 §13.3.1.4, RFC 6026 §8.1)."""

    def __init__(
        self,
        dialog_key: DialogKey,
        data: bytes,
        now: float,
        t1: float = 0.5,
        t2: float = 4.0,
        *,
        reliable: bool = False,
    ) -> None:
        self.dialog_key = dialog_key
        self.data = data
        self.t2 = t2
        self.interval = t1
        self.give_up = now + 64 * t1
        # over a reliable transport the 2xx is not retransmitted, but the ACK is still awaited
        self.next_send: float | None = None if reliable else now + t1
        self.done = False

    def get_timer(self) -> float | None:
        if self.done:
            return None
        if self.next_send is None:
            return self.give_up
        return min(self.next_send, self.give_up)

    def ack_received(self) -> None:
        self.done = True

    def handle_timer(self, now: float) -> list[Retransmit2xx | AckTimedOut]:
        if self.done:
            return []
        if now >= self.give_up:
            self.done = True
            return [AckTimedOut(self.dialog_key)]
        out: list[Retransmit2xx | AckTimedOut] = []
        if self.next_send is not None and now >= self.next_send:
            out.append(Retransmit2xx(self.data))
            self.interval = min(self.interval * 2, self.t2)
            self.next_send = now + self.interval
        return out
