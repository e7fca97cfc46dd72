"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §13.3.1.4, §14, §15; RFC 6026 §8.1), sans-IO.

:class:`Dialog` holds the dialog state of §12 and builds in-dialog requests; its state moves only
by :data:`DIALOG_TABLE` (an unlisted pair raises :class:`ProtocolError`, state unchanged). Entry
points by direction: :meth:`~Dialog.create_request` / :meth:`~Dialog.create_ack` (we send),
:meth:`~Dialog.on_response` (answer to our request), :meth:`~Dialog.on_request` (the peer's
request: 481 not ours, 500 CSeq out of order or the peer's INVITE still unanswered, 491 glare),
:meth:`~Dialog.on_response_sent` (our answer). Via: an optional ``local_via`` template on the
dialog (the sent-by of the socket it uses), or ``via=`` per call; the branch is always new.
Target refresh follows RFC 6141: it takes effect with the 2xx, sent or received.

:class:`DialogTable` looks dialogs up by (Call-ID, local tag, remote tag), forks included.
:class:`Uas2xxRetransmitter` retransmits our 2xx until the ACK (:class:`AckTimedOut` at 64*T1);
:class:`AckCache` answers a retransmitted 2xx with the same ACK bytes. Time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from telephony.sip.errors import ProtocolError, Side, SipError
from telephony.sip.headers import NameAddr, Via, canonical, new_branch
from telephony.sip.message import Headers, Request, Response, make_request
from telephony.sip.uri import URI

T1 = 0.5  # RFC 3261 §17.1.1.1 defaults, seconds
T2 = 4.0
MAX_CSEQ = 2**31 - 1  # §8.1.1.5: CSeq numbers stay below 2**31

# Requests whose Contact refreshes the remote target (§12.2, RFC 3311, RFC 6665, RFC 3515).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
# Header fields create_request writes itself; callers may not pass them in ``headers``.
_OWN_HEADERS = frozenset(
    {"via", "route", "max-forwards", "from", "to", "call-id", "cseq", "content-length"}
)

Role = Literal["uac", "uas"]
DialogKey = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(Enum):
    """What happened to a dialog, sent or received alike."""

    PROVISIONAL = "1xx to the creating INVITE"
    ACCEPTED = "2xx to the creating INVITE"
    REJECTED = "3xx-6xx to the creating INVITE"  # or it timed out (§13.2.2.4)
    REQUEST = "in-dialog request"
    RESPONSE = "response to an in-dialog request"
    BYE = "BYE"
    GONE = "481 or 408 to an in-dialog request"  # §12.2.1.2


S, In = DialogState, DialogInput
DIALOG_TABLE: dict[tuple[DialogState, DialogInput], DialogState] = {
    (S.EARLY, In.PROVISIONAL): S.EARLY,
    (S.EARLY, In.ACCEPTED): S.CONFIRMED,
    (S.EARLY, In.REJECTED): S.TERMINATED,
    (S.EARLY, In.REQUEST): S.EARLY,  # PRACK, UPDATE, INFO in an early dialog
    (S.EARLY, In.RESPONSE): S.EARLY,
    (S.EARLY, In.BYE): S.TERMINATED,  # only the caller may send it (§15)
    (S.EARLY, In.GONE): S.TERMINATED,
    (S.CONFIRMED, In.PROVISIONAL): S.CONFIRMED,  # a 1xx overtaken by the 2xx: no effect
    (S.CONFIRMED, In.ACCEPTED): S.CONFIRMED,  # 2xx retransmission
    (S.CONFIRMED, In.REQUEST): S.CONFIRMED,
    (S.CONFIRMED, In.RESPONSE): S.CONFIRMED,  # incl. a failed re-INVITE (§14.1)
    (S.CONFIRMED, In.BYE): S.TERMINATED,
    (S.CONFIRMED, In.GONE): S.TERMINATED,
    (S.TERMINATED, In.PROVISIONAL): S.TERMINATED,  # late 1xx after an early BYE
    (S.TERMINATED, In.REJECTED): S.TERMINATED,  # the 487 that follows an early BYE (§15.1.2)
    (S.TERMINATED, In.RESPONSE): S.TERMINATED,  # e.g. the 200 to our BYE
    (S.TERMINATED, In.GONE): S.TERMINATED,
}


def mermaid() -> str:
    """The dialog state diagram, generated from :data:`DIALOG_TABLE` (house rule 3)."""
    lines = [
        "stateDiagram-v2",
        "    [*] --> early : 1xx with To tag",
        "    [*] --> confirmed : 2xx",
    ]
    lines += [f"    {s.value} --> {t.value} : {i.value}" for (s, i), t in DIALOG_TABLE.items()]
    lines.append("    terminated --> [*]")
    return "\n".join(lines) + "\n"


def request_key(request: Request) -> DialogKey | None:
    """Dialog key of an incoming request (our tag is in To); None outside a dialog."""
    tag = request.to.tag
    return None if not tag else (request.call_id, tag, request.from_.tag or "")


def response_key(response: Response) -> DialogKey | None:
    """Dialog key of a response to our request (our tag is in From); None without a To tag."""
    tag = response.to.tag
    return None if not tag else (response.call_id, response.from_.tag or "", tag)


def dialog_response_headers(request: Request, contact: NameAddr) -> tuple[tuple[str, str], ...]:
    """Header lines a dialog-creating response needs beyond :func:`make_response`: Record-Route
    copied from the request in order (§12.1.1) and our Contact."""
    rr = tuple(("Record-Route", v) for v in request.headers.get_all("record-route"))
    return (*rr, ("Contact", str(contact)))


def _target(msg: Request | Response) -> URI | None:
    contacts = msg.contact
    return contacts[0].uri if contacts else None


def _without_target(response: Response, target: URI) -> Response:
    """``response`` with ``target`` as its only Contact and no Record-Route: what
    :meth:`Dialog.from_uac` falls back to when it is lenient."""
    lines = [
        (name, v)
        for name, v in response.headers
        if canonical(name) not in ("contact", "record-route")
    ]
    lines.append(("Contact", f"<{target}>"))
    return Response(response.status, response.reason, Headers(lines), b"")


def _request_uri(uri: URI) -> URI:
    """``uri`` without what a Request-URI may not carry (§19.1.1: method param, headers)."""
    if uri.headers or uri.has_param("method"):
        return uri.without_params("method")._replace(headers=())
    return uri


def _untagged(na: NameAddr) -> NameAddr:
    """``na`` without its header params (``na._replace(params=())``, without its overhead)."""
    return NameAddr(na.uri, na.display_name) if na.params else na


def _fail(reason: str, status: int, side: Side) -> ProtocolError:
    return ProtocolError(reason, status=status, side=side)


@dataclass(eq=False)
class Dialog:
    """One dialog seen from our side; ``role`` is ``"uac"`` when we sent the creating INVITE.
    ``local_seq``/``remote_seq`` None mean empty (§12.1.1); ``local_uri``/``remote_uri`` are
    From/To without tag; ``route_set`` is in sending order; ``invite_out``/``invite_in`` are
    the CSeq of our / the peer's INVITE still without a final response (§14)."""

    role: Role
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddr
    remote_uri: NameAddr
    remote_target: URI
    route_set: tuple[NameAddr, ...]
    local_seq: int | None
    remote_seq: int | None
    secure: bool
    local_contact: NameAddr | None = None
    state: DialogState = DialogState.EARLY
    local_via: Via | None = None
    invite_out: int | None = None
    invite_in: int | None = None

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def from_uac(
        cls,
        invite: Request,
        response: Response,
        *,
        local_via: Via | None = None,
        lenient: bool = False,
    ) -> Dialog:
        """The dialog that a 101-199 with To tag (early) or a 2xx (confirmed) to our ``invite``
        creates (§12.1.2). Raises :class:`ProtocolError` when ``response`` creates no dialog
        or does not answer ``invite``; 400 for a 2xx without Contact. A 1xx without Contact is
        tolerated: the Request-URI is the target until a Contact arrives. ``lenient``: a
        Contact or Record-Route that is missing or does not parse is replaced by the
        Request-URI and no route (enough to ACK and BYE an answer we cannot use)."""
        if lenient:
            try:
                usable = _target(response) is not None
                response.record_route  # noqa: B018 (parsed now: raises when malformed)
            except SipError:
                usable = False
            if not usable:
                response = _without_target(response, invite.uri)
        status, tag = response.status, response.to.tag
        if not tag or not 100 < status < 300:
            raise _fail("response creates no dialog", 400, "peer")
        if (
            response.call_id != invite.call_id
            or response.from_.tag != invite.from_.tag
            or response.cseq != (invite.cseq.seq, "INVITE")
            or invite.method != "INVITE"
        ):
            raise _fail("response does not answer this INVITE", 400, "peer")
        target = _target(response)
        if target is None:
            if status >= 200:
                raise _fail("2xx to INVITE without Contact", 400, "peer")
            target = invite.uri
        return cls(
            role="uac",
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=tag,
            local_uri=_untagged(invite.from_),
            remote_uri=_untagged(invite.to),
            remote_target=target,
            route_set=tuple(reversed(response.record_route)),
            local_seq=invite.cseq.seq,
            remote_seq=None,
            secure=invite.uri.scheme == "sips",
            local_contact=invite.contact[0] if invite.contact else None,
            state=S.CONFIRMED if status >= 200 else S.EARLY,
            local_via=local_via,
            invite_out=None if status >= 200 else invite.cseq.seq,
        )

    @classmethod
    def from_uas(
        cls,
        invite: Request,
        local_tag: str,
        local_contact: NameAddr,
        *,
        confirmed: bool = False,
        secure: bool | None = None,
        local_via: Via | None = None,
    ) -> Dialog:
        """The dialog our 1xx (early) or 2xx (``confirmed=True``) to ``invite`` creates
        (§12.1.1). Put ``local_tag`` on the response's To and use
        :func:`dialog_response_headers`. An early dialog is confirmed by
        :meth:`on_response_sent` with the 2xx. ``secure`` defaults to "the Request-URI is
        SIPS"; pass False when it did not arrive over TLS. 400 when the INVITE has no Contact.
        """
        target = cls.check_uas(invite)
        return cls(
            role="uas",
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local_uri=_untagged(invite.to),
            remote_uri=_untagged(invite.from_),
            remote_target=target,
            route_set=tuple(invite.record_route),
            local_seq=None,
            remote_seq=invite.cseq.seq,
            secure=invite.uri.scheme == "sips" if secure is None else secure,
            local_contact=local_contact,
            state=S.CONFIRMED if confirmed else S.EARLY,
            local_via=local_via,
            invite_in=None if confirmed or invite.method != "INVITE" else invite.cseq.seq,
        )

    @staticmethod
    def check_uas(invite: Request) -> URI:
        """What :meth:`from_uas` needs of ``invite``, checked now (a B2BUA checks before it
        dials anyone, not when the far end answers): no To tag (481), a Contact that parses
        (400 without one), a Record-Route that parses. Returns the remote target."""
        if invite.to.tag:
            raise _fail("request is already in a dialog", 481, "peer")
        target = _target(invite)
        if target is None:
            raise _fail("dialog-creating request without Contact", 400, "peer")
        invite.record_route  # noqa: B018 (parsed now: raises ParseError when malformed)
        return target

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.local_tag, self.remote_tag)

    def matches(self, msg: Request | Response) -> bool:
        """True when ``msg`` (a request from the peer, or a response to one of our requests)
        belongs to this dialog."""
        key = request_key(msg) if isinstance(msg, Request) else response_key(msg)
        return key == self.key

    def _next(self, inp: DialogInput, status: int, side: Side) -> DialogState:
        nxt = DIALOG_TABLE.get((self.state, inp))
        if nxt is None:
            raise _fail(f"dialog: {inp.value} not allowed when {self.state.value}", status, side)
        return nxt

    def _step(self, inp: DialogInput, status: int = 500, side: Side = "local") -> None:
        self.state = self._next(inp, status, side)

    # -- requests we send ------------------------------------------------------------------

    def create_request(
        self,
        method: str,
        via: Via | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The next in-dialog request (§12.2.1.1), counted in ``local_seq``. ``via`` (else
        ``local_via``) gives our sent-by; the branch is always new. Target-refresh methods
        carry our Contact unless ``headers`` has one. Sending BYE terminates the dialog (§15).
        Raises :class:`ProtocolError` (500, local) when the request is not allowed now."""
        if method in ("ACK", "CANCEL"):
            raise _fail(f"{method} is not built with create_request", 500, "local")
        nxt = self._next(In.BYE if method == "BYE" else In.REQUEST, 500, "local")
        if method == "BYE" and self.role == "uas" and self.state is S.EARLY:
            raise _fail("the callee may not send BYE in an early dialog", 500, "local")
        if method == "INVITE" and (self.invite_out is not None or self.invite_in is not None):
            raise _fail("an INVITE transaction is in progress in this dialog", 500, "local")
        seq = 1 if self.local_seq is None else self.local_seq + 1
        if seq > MAX_CSEQ:
            raise _fail("local CSeq exhausted", 500, "local")
        req = self._build(method, seq, via, headers=headers, body=body, ctype=content_type)
        self.local_seq, self.state = seq, nxt
        if method == "INVITE":
            self.invite_out = seq
        return req

    def create_ack(
        self,
        invite_cseq: int,
        via: Via | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE numbered ``invite_cseq`` (§13.2.2.4): an in-dialog
        request with the INVITE's CSeq number. Pass the INVITE's credentials in ``headers``.
        Allowed in any state: every 2xx is ACKed, even one for a dialog we are ending."""
        if self.local_seq is None or not 0 <= invite_cseq <= self.local_seq:
            raise _fail("ACK for an INVITE we did not send", 500, "local")
        return self._build("ACK", invite_cseq, via, headers=headers, body=body, ctype=content_type)

    def ack_timed_out(self, via: Via | None = None) -> Request:
        """Our 2xx was never ACKed (:class:`AckTimedOut`): the dialog is ended with this BYE
        (§13.3.1.4), which the caller sends."""
        return self.create_request("BYE", via)

    def _routing(self) -> tuple[URI, tuple[NameAddr, ...]]:
        """Request-URI and Route values per §12.2.1.1, loose or strict first hop."""
        routes = self.route_set
        if not routes or routes[0].uri.has_param("lr"):
            return _request_uri(self.remote_target), routes
        # a strict router takes the Request-URI; the remote target goes last in Route
        return _request_uri(routes[0].uri), (*routes[1:], NameAddr(self.remote_target))

    def next_hop(self) -> URI:
        """Where an in-dialog request goes (§8.1.2): the first route, else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def _build(
        self,
        method: str,
        seq: int,
        via: Via | None,
        *,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        ctype: str | None,
    ) -> Request:
        via = via if via is not None else self.local_via
        if via is None:
            raise _fail("no Via: pass via or set local_via", 500, "local")
        extra = tuple(headers)
        names = {canonical(n) for n, _ in extra}
        if names & _OWN_HEADERS:
            raise _fail("dialog header passed in headers", 500, "local")
        contact = None
        if method in TARGET_REFRESH and "contact" not in names:
            contact = self.local_contact
            if contact is None:
                raise _fail(f"{method} needs a Contact: set local_contact", 500, "local")
        uri, routes = self._routing()
        return make_request(
            method,
            uri,
            via=via.with_param("branch", new_branch()),
            from_=self.local_uri.with_tag(self.local_tag),
            to=self.remote_uri.with_tag(self.remote_tag) if self.remote_tag else self.remote_uri,
            call_id=self.call_id,
            cseq=seq,
            contact=contact,
            route=routes,
            headers=extra,
            body=body,
            content_type=ctype,
        )

    # -- responses we receive --------------------------------------------------------------

    def on_response(self, request: Request, response: Response) -> None:
        """A response to ``request``, which we sent in this dialog or which created it. A 2xx
        to the creating INVITE of a dialog we already ended raises 481: ACK it and BYE it
        through a fresh :meth:`from_uac` dialog (§13.2.2.4)."""
        method, status = request.method, response.status
        creating = method == "INVITE" and request.to.tag is None
        if response.to.tag is None:
            if status < 200:
                return  # 100 Trying or a tagless 1xx: no dialog
            # a tagless final to the creating INVITE (a 408 made up for a timeout) ends it too
            ids = (response.call_id, response.from_.tag or "")
            mine = creating and status >= 300 and ids == self.key[:2]
        else:
            mine = self.matches(response)
        if not mine or response.cseq != (request.cseq.seq, method):
            raise _fail("response does not belong to this dialog", 481, "peer")
        if status >= 200 and method == "INVITE" and self.invite_out == request.cseq.seq:
            self.invite_out = None  # answered, whatever the state machine makes of it below
        if status < 200:
            if creating:
                self._step(In.PROVISIONAL, 481, "peer")
                target = _target(response)
                if self.state is S.EARLY and target is not None:
                    self.remote_target = target
            return
        target = _target(response)
        if status < 300:
            if creating and target is None:
                raise _fail("2xx to INVITE without Contact", 400, "peer")
            was_early = self.state is S.EARLY
            self._step(In.ACCEPTED if creating else In.RESPONSE, 481, "peer")
            if creating and was_early and self.role == "uac":
                # recomputed from the 2xx, then fixed for the dialog's life (§13.2.2.4)
                self.route_set = tuple(reversed(response.record_route))
            if method in TARGET_REFRESH and target is not None:
                self.remote_target = target
        elif creating:
            self._step(In.REJECTED, 481, "peer")
        elif status in (408, 481):
            self._step(In.GONE, 481, "peer")
        else:
            self._step(In.RESPONSE, 481, "peer")

    # -- requests we receive ---------------------------------------------------------------

    def on_request(self, request: Request) -> None:
        """Validate and absorb a request from the peer (§12.2.2). :class:`ProtocolError` 481:
        not this dialog, or it is terminated; 500: CSeq not above the last one, or an INVITE
        while the peer's previous one is unanswered (add Retry-After, §14.2); 491: INVITE
        glare. ACK and CANCEL are not counted. A target refresh waits for our 2xx."""
        if not self.matches(request):
            raise _fail("request does not match the dialog", 481, "peer")
        method = request.method
        if method in ("ACK", "CANCEL"):
            return  # they carry the INVITE's CSeq; ACKs are matched by the retransmitter
        nxt = self._next(In.BYE if method == "BYE" else In.REQUEST, 481, "peer")
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            raise _fail("CSeq out of order", 500, "peer")
        self.remote_seq = seq
        if method == "INVITE":
            if self.invite_in is not None:
                raise _fail("previous INVITE not answered yet", 500, "peer")
            if self.invite_out is not None:
                raise _fail("INVITE glare", 491, "peer")
            self.invite_in = seq
        self.state = nxt

    # -- responses we send -----------------------------------------------------------------

    def on_response_sent(self, request: Request, response: Response) -> None:
        """We answer ``request`` (the creating INVITE or an in-dialog request from the peer)
        with ``response``. A 2xx to the creating INVITE confirms the dialog; a 2xx to a target
        refresh takes the request's Contact as the remote target (RFC 6141 §4)."""
        method, status = request.method, response.status
        creating = method == "INVITE" and request.to.tag is None
        if creating and status != 100 and response.to.tag != self.local_tag:
            raise _fail("response To tag is not the dialog's local tag", 500, "local")
        if status < 200:
            if creating and status != 100:
                self._step(In.PROVISIONAL)
            return
        if status < 300:
            self._step(In.ACCEPTED if creating else In.RESPONSE)
            target = _target(request)
            if method in TARGET_REFRESH and target is not None:
                self.remote_target = target
        else:
            self._step(In.REJECTED if creating else In.RESPONSE)
        if method == "INVITE" and self.invite_in == request.cseq.seq:
            self.invite_in = None


@dataclass
class DialogTable:
    """Dialogs by key (Call-ID, local tag, remote tag). The early dialogs of one forked INVITE
    share Call-ID and local tag and differ in the remote tag. Answering 481 to a request whose
    dialog is unknown is the caller's job."""

    dialogs: dict[DialogKey, Dialog] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dialogs)

    def add(self, dialog: Dialog) -> None:
        self.dialogs[dialog.key] = dialog

    def remove(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.key, None)

    def get(self, key: DialogKey) -> Dialog | None:
        return self.dialogs.get(key)

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog of a request from a peer (To tag = our local tag)."""
        key = request_key(request)
        return None if key is None else self.dialogs.get(key)

    def for_response(self, response: Response) -> Dialog | None:
        """The dialog of a response to our request (From tag = our local tag)."""
        key = response_key(response)
        return None if key is None else self.dialogs.get(key)

    def early(self, call_id: str, local_tag: str) -> list[Dialog]:
        """The early dialogs of one of our INVITEs (one per fork that answered with a tag)."""
        return [
            d
            for (cid, tag, _), d in self.dialogs.items()
            if cid == call_id and tag == local_tag and d.state is S.EARLY
        ]

    def terminate_early(self, call_id: str, local_tag: str) -> list[Dialog]:
        """End and remove the early dialogs of our INVITE: call it when its transaction ends
        without a 2xx for them (timeout, or 64*T1 after the first 2xx, §13.2.2.4)."""
        ended = self.early(call_id, local_tag)
        for d in ended:
            d._step(In.REJECTED)
            self.remove(d)
        return ended

    def on_uac_response(
        self, invite: Request, response: Response, *, local_via: Via | None = None
    ) -> Dialog | None:
        """A response to our dialog-creating ``invite``, forks included: creates the early or
        confirmed dialog of a new To tag, updates a known one, and on a 3xx-6xx ends every
        early dialog of the INVITE (§12.3). Returns the response's dialog (None for 100 or a
        tagless response). A second fork's 2xx yields a second confirmed dialog: ACK it, and
        BYE it if one answer is all the caller wants (§13.2.2.4)."""
        local_tag = invite.from_.tag or ""
        key = response_key(response)
        dialog = None if key is None else self.dialogs.get(key)
        if response.status >= 300:
            if dialog is not None and dialog.state is not S.EARLY:
                dialog.on_response(invite, response)  # raises: a final after the 2xx
            self.terminate_early(invite.call_id, local_tag)
            return dialog
        if key is None:
            if response.status >= 200:
                raise _fail("2xx to INVITE without To tag", 400, "peer")
            return None
        if dialog is None:
            dialog = Dialog.from_uac(invite, response, local_via=local_via)
            self.add(dialog)
        else:
            dialog.on_response(invite, response)
        return dialog


@dataclass(frozen=True, slots=True)
class Retransmit2xx:
    """Send the 2xx again: ``data`` is the same bytes as the first time."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """No ACK for our 2xx within 64*T1: the dialog is confirmed but the session ends; send the
    BYE from :meth:`Dialog.ack_timed_out` (§13.3.1.4). ``dialog_key`` names the dialog."""

    dialog_key: DialogKey


class Uas2xxRetransmitter:
    """The UAS core's retransmission of one 2xx to an INVITE (RFC 3261 §13.3.1.4, RFC 6026
    §8.1): resend at T1, then intervals doubling up to T2, until :meth:`ack_received` gets the
    ACK with the INVITE's CSeq number, or :class:`AckTimedOut` at 64*T1.

    Retransmission happens over every transport: a reliable first hop says nothing about the
    hops behind a proxy (§13.3.1.4). ``reliable`` is accepted for compatibility and ignored.
    """

    def __init__(
        self,
        dialog_key: DialogKey,
        data: bytes,
        now: float,
        t1: float = T1,
        t2: float = T2,
        *,
        cseq: int | None = None,
        reliable: bool = False,
    ) -> None:
        del reliable  # see the class docstring
        self.dialog_key = dialog_key
        self.data = data
        self.cseq = cseq
        self.t2 = t2
        self.interval = t1
        self.give_up = now + 64 * t1
        self.next_send = now + t1
        self.done = False

    @classmethod
    def start(
        cls, dialog: Dialog, response: Response, now: float, t1: float = T1, t2: float = T2
    ) -> Uas2xxRetransmitter:
        """Start when the 2xx ``response`` to an INVITE of ``dialog`` is first sent."""
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            raise _fail("only a 2xx to INVITE is retransmitted by the UAS core", 500, "local")
        return cls(dialog.key, response.to_bytes(), now, t1, t2, cseq=response.cseq.seq)

    def get_timer(self) -> float | None:
        return None if self.done else min(self.next_send, self.give_up)

    def ack_received(self, ack: Request | None = None) -> bool:
        """Stop if ``ack`` acknowledges our 2xx (same dialog and CSeq number); True when it
        did. Without ``ack`` the caller has matched it already."""
        if ack is not None and (
            ack.method != "ACK"
            or request_key(ack) != self.dialog_key
            or (self.cseq is not None and ack.cseq.seq != self.cseq)
        ):
            return False
        self.done = True
        return True

    def handle_timer(self, now: float) -> list[Retransmit2xx | AckTimedOut]:
        if self.done:
            return []
        if now >= self.give_up:
            self.done = True
            return [AckTimedOut(self.dialog_key)]
        if now < self.next_send:
            return []
        self.interval = min(self.interval * 2, self.t2)
        self.next_send = now + self.interval
        return [Retransmit2xx(self.data)]


class AckCache:
    """The UAC core's ACK for each 2xx to INVITE, kept 64*T1 (RFC 6026 Timer M) so that a
    retransmitted 2xx gets the same ACK bytes (§13.2.2.4), even after the dialog ended."""

    def __init__(self, t1: float = T1) -> None:
        self.ttl = 64 * t1
        self._acks: dict[tuple[str, str, str, int], tuple[bytes, float]] = {}

    def __len__(self) -> int:
        return len(self._acks)

    def remember(self, ack: Request, now: float) -> bytes:
        """Record the ACK we send; returns its bytes (send those)."""
        data = ack.to_bytes()
        key = (ack.call_id, ack.from_.tag or "", ack.to.tag or "", ack.cseq.seq)
        self._acks[key] = (data, now + self.ttl)
        return data

    def ack_for(self, response: Response, now: float) -> bytes | None:
        """The ACK already sent for this 2xx to INVITE, or None."""
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            return None
        key = (response.call_id, response.from_.tag or "", response.to.tag or "")
        entry = self._acks.get((*key, response.cseq.seq))
        return entry[0] if entry is not None and now < entry[1] else None

    def get_timer(self) -> float | None:
        return min((exp for _, exp in self._acks.values()), default=None)

    def handle_timer(self, now: float) -> None:
        self._acks = {k: v for k, v in self._acks.items() if v[1] > now}
