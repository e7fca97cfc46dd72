"""The registrar for dispatcher positions (RFC 3261 §10.3): the machine.

Softphones REGISTER with handoffd to receive the calls of their position. :class:`Registrar` is
the sans-IO machine: REGISTER requests and ``now`` go in; a reply (status + headers), events and a
deadline come out. It keeps

- the **bindings** of each position (contact, where the REGISTER came from, Call-ID/CSeq,
  expiry), changed atomically per request, with the §10.3 checks: digest authentication
  (RFC 3261 §22 with the algorithms of RFC 8760, ``telephony.sip.auth``), the address-of-record,
  ``*`` with ``Expires: 0``, ``Expires`` / ``;expires=`` against min/max (423 + Min-Expires),
  Call-ID/CSeq ordering (step 7), and a 200 listing every binding with its remaining time;
- the **nonces** (stateless HMAC nonces with a TTL, replay-checked ``nc``; ``stale=true`` when an
  old nonce carries a right password);
- the **qualify schedule**: every ``qualify_interval`` each contact is due an OPTIONS; no answer
  within ``qualify_timeout`` (or 408/503) marks it unreachable, any answer reachable again. One
  table (:data:`TABLE`) says how a binding's reachability moves.

:class:`~telephony.call.positions.PositionRegistrar` wires the machine into the controller.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from telephony.sip.auth import DigestServer, parse_credentials
from telephony.sip.errors import ParseError, SipError
from telephony.sip.headers import NameAddr
from telephony.sip.message import Request
from telephony.sip.transaction import Endpoint
from telephony.sip.uri import URI, parse_uri, unescape

if TYPE_CHECKING:
    from telephony.config import Position, RegistrarConfig


MAX_DELTA = 2**32 - 1  # RFC 3261 §20.19: larger Expires values are taken as this
DOWN_STATUSES = frozenset({408, 503})  # a qualify answered so (or not at all) is a failure
#: URI parameters that take part in comparing two contacts (RFC 3261 §19.1.4)
_COMPARED_PARAMS = ("transport", "user", "method", "ttl", "maddr")


# ------------------------------------------------------------------------------ the table


class Reach(Enum):
    REACHABLE = "reachable"  # registered, and answering OPTIONS (or not asked yet)
    UNREACHABLE = "unreachable"  # the last qualify got no answer: calls avoid it
    REMOVED = "removed"  # expired, unregistered or replaced: gone


class ReachInput(Enum):
    ANSWERED = "answered"  # a qualify OPTIONS got a final response other than 408/503
    SILENT = "no answer"  # no answer within qualify_timeout, or 408/503
    REFRESHED = "refreshed"  # the phone registered the contact again
    EXPIRED = "expired"
    UNREGISTERED = "unregistered"  # Expires 0 for it, or '*'
    REPLACED = "replaced"  # evicted by a newer contact beyond max_contacts


R, RI = Reach, ReachInput
TABLE: dict[tuple[Reach, ReachInput], Reach] = {
    (R.REACHABLE, RI.ANSWERED): R.REACHABLE,
    (R.REACHABLE, RI.SILENT): R.UNREACHABLE,
    (R.REACHABLE, RI.REFRESHED): R.REACHABLE,
    (R.UNREACHABLE, RI.ANSWERED): R.REACHABLE,
    (R.UNREACHABLE, RI.SILENT): R.UNREACHABLE,
    (R.UNREACHABLE, RI.REFRESHED): R.REACHABLE,
    (R.REACHABLE, RI.EXPIRED): R.REMOVED,
    (R.UNREACHABLE, RI.EXPIRED): R.REMOVED,
    (R.REACHABLE, RI.UNREGISTERED): R.REMOVED,
    (R.UNREACHABLE, RI.UNREGISTERED): R.REMOVED,
    (R.REACHABLE, RI.REPLACED): R.REMOVED,
    (R.UNREACHABLE, RI.REPLACED): R.REMOVED,
}


def mermaid() -> str:
    """The table as a Mermaid state diagram (docs/registrar.md is generated from it)."""
    lines = ["stateDiagram-v2", "    [*] --> reachable: registered"]
    lines += [f"    {s.value} --> {d.value}: {i.value}" for (s, i), d in TABLE.items()]
    lines.append("    removed --> [*]")
    return "\n".join(lines) + "\n"


class BindingStateError(SipError):
    """An input the table does not allow in the binding's state (a bug on our side)."""

    def __init__(self, state: Reach, inp: ReachInput) -> None:
        super().__init__(f"binding is {state.value}: cannot take {inp.value}", 500, "local")


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class ContactRegistered:
    """A new binding: ``contact`` (its URI) of ``position``, reached at ``source`` (the
    REGISTER's transport and address), for ``expires`` seconds."""

    position: str
    contact: str
    source: Endpoint
    expires: int


@dataclass(frozen=True, slots=True)
class ContactRefreshed:
    """An existing binding registered again (new expiry, maybe a new source address)."""

    position: str
    contact: str
    source: Endpoint
    expires: int


@dataclass(frozen=True, slots=True)
class ContactRemoved:
    """A binding is gone: ``reason`` is ``expired``, ``unregistered`` or ``replaced``."""

    position: str
    contact: str
    reason: str


@dataclass(frozen=True, slots=True)
class ContactUnreachable:
    """A contact stopped answering its qualify OPTIONS; calls skip it until it answers."""

    position: str
    contact: str


@dataclass(frozen=True, slots=True)
class ContactReachable:
    """An unreachable contact answered again (or registered again)."""

    position: str
    contact: str


@dataclass(frozen=True, slots=True)
class QualifyDue:
    """Send an OPTIONS to ``uri`` at ``dest`` now and report the outcome with
    :meth:`Registrar.qualify_result` (``binding``, ``seq``); silence is counted by the machine."""

    binding: int
    seq: int
    position: str
    uri: URI
    dest: Endpoint


@dataclass(frozen=True, slots=True)
class RegisterRejected:
    """A REGISTER answered with ``status`` (not 200). ``detail`` is for logs only: it tells an
    unknown user from a wrong password and is never sent."""

    status: int
    source: Endpoint
    username: str | None
    detail: str


RegistrarEvent = (
    ContactRegistered
    | ContactRefreshed
    | ContactRemoved
    | ContactUnreachable
    | ContactReachable
    | QualifyDue
    | RegisterRejected
)


# ------------------------------------------------------------------------------ replies, errors


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """The answer to one REGISTER: a status and the headers beyond :func:`make_response`'s."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()


class RegistrationError(SipError):
    """A REGISTER the registrar refuses: ``status`` (and ``headers``: a challenge, Min-Expires,
    Unsupported) is the answer; ``reason`` may go into a Warning header, ``detail`` only into
    logs."""

    def __init__(
        self,
        reason: str,
        status: int,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        detail: str = "",
        username: str | None = None,
    ) -> None:
        super().__init__(reason, status, "peer")
        self.headers = headers
        self.detail = detail or reason
        self.username = username


# ------------------------------------------------------------------------------ bindings


@dataclass(slots=True)
class Binding:
    """One contact of one position. ``source`` is where its REGISTER came from (calls and
    qualify OPTIONS go there); ``contact`` keeps the header params (not ``expires``)."""

    id: int
    position: str
    contact: NameAddr
    source: Endpoint
    call_id: str
    cseq: int
    expires_at: float
    updated_at: float
    q: float = 1.0
    state: Reach = Reach.REACHABLE
    next_qualify: float | None = None
    pending_seq: int | None = None
    pending_deadline: float | None = None

    @property
    def uri(self) -> URI:
        return self.contact.uri

    def view(self) -> BindingInfo:
        return BindingInfo(
            self.position, str(self.uri), self.source, self.expires_at, self.state, self.q
        )


@dataclass(frozen=True, slots=True)
class BindingInfo:
    """What a binding looks like from outside (tests, logs, a future API)."""

    position: str
    contact: str
    source: Endpoint
    expires_at: float
    state: Reach
    q: float


def contact_key(uri: URI) -> tuple[object, ...]:
    """What makes two contacts the same binding (RFC 3261 §19.1.4, simplified: scheme, user,
    password, host case-insensitively, port as written, and the parameters that always count)."""
    params = tuple((p, (uri.param(p) or "").lower()) for p in _COMPARED_PARAMS)
    return (uri.scheme, uri.user, uri.password, uri.host.lower(), uri.port, params)


def _delta(text: str, what: str) -> int:
    """delta-seconds (1*DIGIT), capped at 2**32-1; ParseError (400) otherwise."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"{what} is not a number of seconds")
    return min(int(text), MAX_DELTA)


def _qvalue(text: str | None) -> float:
    if text is None:
        return 1.0
    try:
        q = float(text)
    except ValueError:
        q = -1.0
    if not 0.0 <= q <= 1.0 or not text.replace(".", "", 1).isdigit():
        raise ParseError("Contact q is not a qvalue (0 to 1)")
    return q


# ------------------------------------------------------------------------------ the machine


@dataclass(slots=True)
class _Change:
    contact: NameAddr
    expires: int
    q: float
    binding: Binding | None = None


class Registrar:
    """Bindings, nonces and the qualify schedule of every position with ``auth``.

    ``register`` never raises: every refusal is a :class:`RegisterReply` (and a
    :class:`RegisterRejected` event). Drain :meth:`events` after each call; drive the deadlines
    with :meth:`get_timer` / :meth:`handle_timer`.
    """

    def __init__(
        self,
        config: RegistrarConfig,
        positions: Mapping[str, Position],
        *,
        secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.positions = {p.name: p for p in positions.values() if p.auth is not None}
        self._by_username = {p.auth.username: p for p in self.positions.values() if p.auth}
        self._aors = {*positions, *self._by_username}  # every address-of-record we know
        self.digest = DigestServer(
            config.realm,
            secret if secret is not None else secrets.token_bytes(32),
            nonce_ttl=config.nonce_ttl,
            algorithms=config.algorithms,
            require_qop=config.require_qop,
        )
        self._bindings: dict[int, Binding] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._events: list[RegistrarEvent] = []
        self._deadline: float | None = None
        self._dirty = False  # bindings changed since the deadline was computed

    # -- queries ----------------------------------------------------------------------------

    def events(self) -> list[RegistrarEvent]:
        out, self._events = self._events, []
        return out

    def bindings(self, position: str) -> list[BindingInfo]:
        """The live bindings of ``position``, oldest first."""
        return [b.view() for b in self._of(position)]

    def target(self, position: str, now: float) -> tuple[URI, Endpoint] | None:
        """Where ``position``'s calls go: the reachable, unexpired binding with the highest q,
        the most recently registered among equals; None when it has none."""
        live = [b for b in self._of(position) if b.state is Reach.REACHABLE and b.expires_at > now]
        if not live:
            return None
        best = max(live, key=lambda b: (b.q, b.updated_at, b.id))
        return best.uri, best.source

    def _of(self, position: str) -> list[Binding]:
        return [b for b in self._bindings.values() if b.position == position]

    def live(self, position: str) -> list[Binding]:
        """The bindings of ``position`` themselves (to store them; do not change them)."""
        return self._of(position)

    def restore(self, kept: Iterable[Binding], now: float) -> int:
        """Bindings kept from before a restart (``telephony/registrations.py``): each one of a
        position we still serve, not expired at ``now`` and not registered again meanwhile is
        taken back, reachable until its first qualify (due within a second) says otherwise.
        Ids are given here. Returns how many were taken."""
        taken = 0
        for b in kept:
            have = self._of(b.position)
            if (
                b.position not in self.positions
                or b.expires_at <= now
                or len(have) >= self.config.max_contacts
                or any(contact_key(x.uri) == contact_key(b.uri) for x in have)
            ):
                continue
            b.id, b.updated_at, b.state = next(self._ids), now, Reach.REACHABLE
            interval = self.config.qualify_interval
            b.next_qualify = now + min(1.0, interval) if interval else None
            b.pending_seq = b.pending_deadline = None
            self._bindings[b.id] = b
            taken += 1
        self._dirty = self._dirty or taken > 0
        return taken

    # -- REGISTER -----------------------------------------------------------------------------

    def register(self, request: Request, source: Endpoint, now: float) -> RegisterReply:
        """Process one REGISTER (RFC 3261 §10.3) received from ``source`` at ``now``."""
        self._dirty = True
        try:
            return self._register(request, source, now)
        except RegistrationError as err:
            self._events.append(RegisterRejected(err.status, source, err.username, err.detail))
            warning = (_warning(err.reason),) if err.status == 400 else ()
            return RegisterReply(err.status, err.headers or warning)
        except SipError as exc:  # ParseError from a header of the request: 400
            self._events.append(RegisterRejected(exc.status, source, None, exc.reason))
            return RegisterReply(exc.status, (_warning(exc.reason),))

    def _register(self, req: Request, source: Endpoint, now: float) -> RegisterReply:
        if req.uri.scheme != "sip":
            raise RegistrationError("only sip: Request-URIs", 416)
        to, call_id, cseq = req.to, req.call_id, req.cseq.seq  # ParseError: 400
        if req.require:  # §10.3 step 2: we support no extension
            unsupported = (("Unsupported", ", ".join(req.require)),)
            raise RegistrationError("unsupported extension", 420, headers=unsupported)
        position = self._authenticate(req, now)  # step 3
        self._check_aor(position, to.uri)  # steps 4 and 5
        if req.contact_is_star:
            self._unregister_all(req, position.name, call_id, cseq)
        else:
            changes = self._changes(req, position.name, call_id, cseq)
            self._apply(changes, position.name, source, call_id=call_id, cseq=cseq, now=now)
        return RegisterReply(200, tuple(self._contact_headers(position.name, now)))

    def _authenticate(self, req: Request, now: float) -> Position:
        realm = self.config.realm
        value = None
        for candidate in req.headers.get_all("authorization"):
            if parse_credentials(candidate).realm == realm:  # ParseError: 400
                value = candidate
                break
        if value is None:
            raise RegistrationError("credentials required", 401, headers=self._challenge(now))
        creds = parse_credentials(value)
        try:  # parameters aside: pyVoIP signs "sip:HOST;transport=UDP" for "sip:HOST"
            digest_uri = parse_uri(creds.uri)._replace(params=(), headers=())
        except ParseError:
            digest_uri = None
        if digest_uri != req.uri._replace(params=(), headers=()):  # RFC 7616 §3.4.6
            raise RegistrationError("digest uri is not the Request-URI", 400)
        result = self.digest.verify(
            value, method="REGISTER", now=now, lookup_password=self._password
        )
        if result.stale:
            challenge = self._challenge(now, stale=True)
            raise RegistrationError(
                "stale nonce", 401, headers=challenge, detail=result.reason, username=creds.username
            )
        if not result.ok or result.username not in self._by_username:
            # one answer for an unknown user and a wrong password: no account enumeration
            raise RegistrationError(
                "forbidden", 403, detail=result.reason or "unknown user", username=creds.username
            )
        return self._by_username[result.username]

    def _password(self, username: str, _realm: str) -> str | None:
        position = self._by_username.get(username)
        return None if position is None or position.auth is None else position.auth.password

    def _challenge(self, now: float, *, stale: bool = False) -> tuple[tuple[str, str], ...]:
        return tuple(("WWW-Authenticate", v) for v in self.digest.challenge(now, stale=stale))

    def _check_aor(self, position: Position, aor: URI) -> None:
        """The To URI names the address-of-record: the position's name or its username. Another
        position's is not this user's to change (403); anything else does not exist (404)."""
        user = unescape(aor.user or "") if aor.is_sip else ""
        assert position.auth is not None
        if user in (position.name, position.auth.username):
            return
        who = position.auth.username
        if user in self._aors:
            raise RegistrationError("not your address-of-record", 403, username=who)
        raise RegistrationError("no such address-of-record", 404, username=who)

    def _unregister_all(self, req: Request, position: str, call_id: str, cseq: int) -> None:
        """``Contact: *``: only with ``Expires: 0`` and no other Contact (§10.3 step 6); a
        binding of the same Call-ID with a CSeq not below this one stays."""
        expires = req.headers.get("expires")
        if expires is None or _delta(expires, "Expires") != 0:
            raise RegistrationError("Contact: * needs Expires: 0", 400)
        for b in self._of(position):
            if b.call_id != call_id or b.cseq < cseq:
                self._remove(b, ReachInput.UNREGISTERED)

    def _changes(self, req: Request, position: str, call_id: str, cseq: int) -> list[_Change]:
        """Every Contact with its expiry, all checked before anything changes (atomic)."""
        cfg = self.config
        if any(v.strip() == "*" for v in _contact_values(req)):
            raise RegistrationError("'*' must be the only Contact", 400)
        try:
            contacts = req.contact
        except ParseError as err:
            raise RegistrationError(f"malformed Contact: {err.reason}", 400) from None
        header = req.headers.get("expires")
        default = cfg.default_expires if header is None else _delta(header, "Expires")
        changes: dict[tuple[object, ...], _Change] = {}
        too_brief = False
        for contact in contacts:
            if contact.uri.scheme != "sip":
                raise RegistrationError("a Contact must be a sip: URI", 400)
            param = contact.param("expires")
            expires = default if param is None else _delta(param, "Contact expires")
            expires = min(expires, cfg.max_expires)
            too_brief = too_brief or 0 < expires < cfg.min_expires
            q = _qvalue(contact.param("q"))
            bare = contact._replace(params=tuple(p for p in contact.params if p[0] != "expires"))
            changes[contact_key(contact.uri)] = _Change(bare, expires, q)
        if too_brief:  # §10.3 step 6 / RFC 3261 §21.4.17
            headers = (("Min-Expires", str(cfg.min_expires)),)
            raise RegistrationError("interval too brief", 423, headers=headers)
        existing = {contact_key(b.uri): b for b in self._of(position)}
        for key, change in changes.items():
            b = existing.get(key)
            if b is not None and b.call_id == call_id and cseq <= b.cseq:  # step 7
                raise RegistrationError("CSeq not above the binding's", 400)
            change.binding = b
        return list(changes.values())

    def _apply(
        self,
        changes: Iterable[_Change],
        position: str,
        source: Endpoint,
        *,
        call_id: str,
        cseq: int,
        now: float,
    ) -> None:
        interval = self.config.qualify_interval
        for ch in changes:
            b, contact = ch.binding, str(ch.contact.uri)
            if ch.expires == 0:
                if b is not None:
                    self._remove(b, ReachInput.UNREGISTERED)
                continue
            if b is None:
                b = Binding(next(self._ids), position, ch.contact, source, call_id, cseq, 0.0, now)
                b.next_qualify = now + interval if interval else None
                self._bindings[b.id] = b
                self._events.append(ContactRegistered(position, contact, source, ch.expires))
            else:
                self._step(b, ReachInput.REFRESHED)
                self._events.append(ContactRefreshed(position, contact, source, ch.expires))
            b.contact, b.source, b.call_id, b.cseq, b.q = ch.contact, source, call_id, cseq, ch.q
            b.expires_at, b.updated_at = now + ch.expires, now
        live = self._of(position)
        for b in sorted(live, key=lambda b: (b.updated_at, b.id))[: -self.config.max_contacts]:
            self._remove(b, ReachInput.REPLACED)  # the newest registrations win

    def _contact_headers(self, position: str, now: float) -> Iterable[tuple[str, str]]:
        for b in self._of(position):
            left = max(0, math.ceil(b.expires_at - now))
            yield "Contact", str(b.contact.with_param("expires", str(left)))

    # -- the machine's moves ------------------------------------------------------------------

    def _step(self, b: Binding, inp: ReachInput) -> None:
        nxt = TABLE.get((b.state, inp))
        if nxt is None:
            raise BindingStateError(b.state, inp)
        before, b.state = b.state, nxt
        contact = str(b.uri)
        if before is Reach.REACHABLE and nxt is Reach.UNREACHABLE:
            self._events.append(ContactUnreachable(b.position, contact))
        elif before is Reach.UNREACHABLE and nxt is Reach.REACHABLE:
            self._events.append(ContactReachable(b.position, contact))
        elif nxt is Reach.REMOVED:
            self._events.append(ContactRemoved(b.position, contact, inp.value))

    def _remove(self, b: Binding, inp: ReachInput) -> None:
        self._step(b, inp)
        del self._bindings[b.id]

    # -- time ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next expiry, qualify or qualify deadline; None with no bindings. Recomputed only
        after a change (the controller asks after every SIP event)."""
        if self._dirty:
            times = [
                t
                for b in self._bindings.values()
                for t in (b.expires_at, b.next_qualify, b.pending_deadline)
                if t is not None
            ]
            self._deadline, self._dirty = (min(times) if times else None), False
        return self._deadline

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return  # the controller's own timers fired, not ours
        self._dirty = True
        cfg = self.config
        for b in list(self._bindings.values()):
            if b.expires_at <= now:
                self._remove(b, ReachInput.EXPIRED)
                continue
            if b.pending_deadline is not None and b.pending_deadline <= now:
                b.pending_seq = b.pending_deadline = None
                self._step(b, ReachInput.SILENT)
            if b.next_qualify is not None and b.next_qualify <= now:
                b.next_qualify = now + cfg.qualify_interval
                if b.pending_seq is None:
                    b.pending_seq = next(self._seq)
                    b.pending_deadline = now + cfg.qualify_timeout
                    self._events.append(
                        QualifyDue(b.id, b.pending_seq, b.position, b.uri, b.source)
                    )

    def qualify_result(self, binding: int, seq: int, status: int) -> None:
        """The final status the qualify ``seq`` of ``binding`` got (408 when it timed out in the
        transaction layer, 503 on a transport failure). Late or unknown answers are ignored."""
        b = self._bindings.get(binding)
        if b is None or b.pending_seq != seq:
            return
        self._dirty = True
        b.pending_seq = b.pending_deadline = None
        self._step(b, ReachInput.SILENT if status in DOWN_STATUSES else ReachInput.ANSWERED)


def _contact_values(req: Request) -> list[str]:
    return [item for v in req.headers.get_all("contact") for item in v.split(",")]


def _warning(text: str) -> tuple[str, str]:
    safe = text.replace('"', "'").replace("\\", "/")
    return ("Warning", f'399 handoffd "{safe}"')
