"""SIP transactions (RFC 3261 §17 as updated by RFC 6026), sans-IO.

Four machines, each one transition table: INVITE client, non-INVITE client, INVITE server,
non-INVITE server. A table maps ``(state, input)`` to ``(next state, action)``; a pair that is not
listed is a protocol error (:class:`ProtocolError`). Inputs come from the network (``1xx``,
``request``, ``ack`` ...), from the transaction user (``send_1xx`` ...) or from timers
(``timer_a`` ...). :class:`TransactionLayer` matches messages to transactions (§17.1.3, §17.2.3 with
the RFC 2543 fallback), answers what the RFC says the layer answers itself (100 Trying, 200 to a
matched CANCEL, 481 to an unmatched one, 482 to a merged request), and keeps every deadline in one
heap: the I/O layer asks :meth:`TransactionLayer.get_timer` and calls
:meth:`TransactionLayer.handle_timer` with the current time. Nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from telephony.sip.errors import ProtocolError
from telephony.sip.message import (
    Request,
    Response,
    make_ack_for_failure,
    make_cancel,
    make_response,
)

# -- values exchanged with the I/O layer and the transaction user -----------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a message came from or goes to."""

    transport: str  # "udp" | "tcp" | "tls", lower-case
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17 base timers, in seconds (defaults per Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


# Client keys are (branch, method); server keys (branch, sent-by, method), or for RFC 2543 peers
# ("2543", call-id, from-tag, cseq number, top Via, method).
TransactionKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Transmit:
    """Bytes for the I/O layer to send to ``dest``; ``message`` is what they encode."""

    data: bytes
    dest: Endpoint
    message: Request | Response


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request arrived. ``key`` names its server transaction (answer it with
    ``send_response``); it is None for an ACK to a 2xx, which has no transaction."""

    request: Request
    source: Endpoint
    key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for client transaction ``key``; ``key`` is None for a 2xx to an INVITE whose
    transaction is gone (a retransmission the UAC core must ACK again)."""

    response: Response
    source: Endpoint
    key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL matched the pending INVITE ``invite_key``; the layer already answered the CANCEL
    200. The TU decides whether to answer the INVITE 487."""

    cancel: Request
    source: Endpoint
    invite_key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B or F (no final response: treat as 408), or H (no ACK for our failure response)."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The I/O layer could not deliver for transaction ``key`` (treat as 503, RFC 3261 §8.1.3.1)."""

    key: TransactionKey
    request: Request


Event = RequestReceived | ResponseReceived | CancelReceived | TransactionTimedOut | TransportFailed


# -- the four transition tables ---------------------------------------------------------------


class State(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


Table = dict[tuple[State, str], tuple[State, str]]
S = State

# Actions: "pass" (to the TU), "ack" (send ACK for a failure), "resend", "send", "timeout",
# "error", "drop" (absorb), "none".
INVITE_CLIENT: Table = {
    (S.CALLING, "timer_a"): (S.CALLING, "resend"),
    (S.CALLING, "timer_b"): (S.TERMINATED, "timeout"),
    (S.CALLING, "1xx"): (S.PROCEEDING, "pass"),
    (S.CALLING, "2xx"): (S.ACCEPTED, "pass"),
    (S.CALLING, "3xx-6xx"): (S.COMPLETED, "pass+ack"),
    (S.CALLING, "transport_error"): (S.TERMINATED, "error"),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, "pass"),
    (S.PROCEEDING, "2xx"): (S.ACCEPTED, "pass"),
    (S.PROCEEDING, "3xx-6xx"): (S.COMPLETED, "pass+ack"),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, "error"),
    (S.PROCEEDING, "timer_cancel"): (S.TERMINATED, "timeout"),
    (S.COMPLETED, "1xx"): (S.COMPLETED, "drop"),
    (S.COMPLETED, "2xx"): (S.COMPLETED, "drop"),
    (S.COMPLETED, "3xx-6xx"): (S.COMPLETED, "ack"),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, "none"),
    (S.COMPLETED, "timer_d"): (S.TERMINATED, "none"),
    (S.ACCEPTED, "1xx"): (S.ACCEPTED, "drop"),
    (S.ACCEPTED, "2xx"): (S.ACCEPTED, "pass"),
    (S.ACCEPTED, "3xx-6xx"): (S.ACCEPTED, "drop"),
    (S.ACCEPTED, "transport_error"): (S.ACCEPTED, "drop"),
    (S.ACCEPTED, "timer_m"): (S.TERMINATED, "none"),
}

NON_INVITE_CLIENT: Table = {
    (S.TRYING, "timer_e"): (S.TRYING, "resend"),
    (S.TRYING, "timer_f"): (S.TERMINATED, "timeout"),
    (S.TRYING, "1xx"): (S.PROCEEDING, "pass"),
    (S.TRYING, "final"): (S.COMPLETED, "pass"),
    (S.TRYING, "transport_error"): (S.TERMINATED, "error"),
    (S.PROCEEDING, "timer_e"): (S.PROCEEDING, "resend"),
    (S.PROCEEDING, "timer_f"): (S.TERMINATED, "timeout"),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, "pass"),
    (S.PROCEEDING, "final"): (S.COMPLETED, "pass"),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, "error"),
    (S.COMPLETED, "1xx"): (S.COMPLETED, "drop"),
    (S.COMPLETED, "final"): (S.COMPLETED, "drop"),
    (S.COMPLETED, "transport_error"): (S.COMPLETED, "drop"),
    (S.COMPLETED, "timer_k"): (S.TERMINATED, "none"),
}

INVITE_SERVER: Table = {
    (S.PROCEEDING, "request"): (S.PROCEEDING, "resend"),
    (S.PROCEEDING, "send_1xx"): (S.PROCEEDING, "send"),
    (S.PROCEEDING, "send_2xx"): (S.ACCEPTED, "send"),
    (S.PROCEEDING, "send_3xx-6xx"): (S.COMPLETED, "send"),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, "error"),
    (S.COMPLETED, "request"): (S.COMPLETED, "resend"),
    (S.COMPLETED, "ack"): (S.CONFIRMED, "none"),
    (S.COMPLETED, "timer_g"): (S.COMPLETED, "resend"),
    (S.COMPLETED, "timer_h"): (S.TERMINATED, "timeout"),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, "error"),
    (S.CONFIRMED, "request"): (S.CONFIRMED, "drop"),
    (S.CONFIRMED, "ack"): (S.CONFIRMED, "drop"),
    (S.CONFIRMED, "timer_i"): (S.TERMINATED, "none"),
    (S.ACCEPTED, "request"): (S.ACCEPTED, "drop"),
    (S.ACCEPTED, "ack"): (S.ACCEPTED, "pass"),
    (S.ACCEPTED, "send_2xx"): (S.ACCEPTED, "send"),
    (S.ACCEPTED, "transport_error"): (S.ACCEPTED, "drop"),
    (S.ACCEPTED, "timer_l"): (S.TERMINATED, "none"),
}

NON_INVITE_SERVER: Table = {
    (S.TRYING, "request"): (S.TRYING, "drop"),
    (S.TRYING, "send_1xx"): (S.PROCEEDING, "send"),
    (S.TRYING, "send_final"): (S.COMPLETED, "send"),
    (S.TRYING, "transport_error"): (S.TERMINATED, "error"),
    (S.PROCEEDING, "request"): (S.PROCEEDING, "resend"),
    (S.PROCEEDING, "send_1xx"): (S.PROCEEDING, "send"),
    (S.PROCEEDING, "send_final"): (S.COMPLETED, "send"),
    (S.PROCEEDING, "transport_error"): (S.TERMINATED, "error"),
    (S.COMPLETED, "request"): (S.COMPLETED, "resend"),
    (S.COMPLETED, "transport_error"): (S.TERMINATED, "none"),
    (S.COMPLETED, "timer_j"): (S.TERMINATED, "none"),
}

TABLES: dict[str, Table] = {
    "INVITE client": INVITE_CLIENT,
    "non-INVITE client": NON_INVITE_CLIENT,
    "INVITE server": INVITE_SERVER,
    "non-INVITE server": NON_INVITE_SERVER,
}

# Timers each state starts on entry: name -> interval as a function of (config, reliable).
_Interval = Callable[[TimerConfig, bool], float | None]


def _unreliable(f: Callable[[TimerConfig], float]) -> _Interval:
    return lambda c, reliable: None if reliable else f(c)


def _always(f: Callable[[TimerConfig], float]) -> _Interval:
    return lambda c, reliable: f(c)


def _reliable_zero(f: Callable[[TimerConfig], float]) -> _Interval:
    return lambda c, reliable: 0.0 if reliable else f(c)


_ON_ENTRY: dict[tuple[str, State], dict[str, _Interval]] = {
    ("INVITE client", S.CALLING): {
        "timer_a": _unreliable(lambda c: c.t1),
        "timer_b": _always(lambda c: 64 * c.t1),
    },
    ("INVITE client", S.COMPLETED): {"timer_d": _reliable_zero(lambda c: max(32.0, 64 * c.t1))},
    ("INVITE client", S.ACCEPTED): {"timer_m": _always(lambda c: 64 * c.t1)},
    ("non-INVITE client", S.TRYING): {
        "timer_e": _unreliable(lambda c: c.t1),
        "timer_f": _always(lambda c: 64 * c.t1),
    },
    ("non-INVITE client", S.COMPLETED): {"timer_k": _reliable_zero(lambda c: c.t4)},
    ("INVITE server", S.COMPLETED): {
        "timer_g": _unreliable(lambda c: c.t1),
        "timer_h": _always(lambda c: 64 * c.t1),
    },
    ("INVITE server", S.CONFIRMED): {"timer_i": _reliable_zero(lambda c: c.t4)},
    ("INVITE server", S.ACCEPTED): {"timer_l": _always(lambda c: 64 * c.t1)},
    ("non-INVITE server", S.COMPLETED): {"timer_j": _reliable_zero(lambda c: 64 * c.t1)},
}
# Retransmission timers double up to a cap: A and (for INVITE) without cap, E and G at T2.
_BACKOFF_CAP: dict[str, Callable[[TimerConfig], float]] = {
    "timer_a": lambda c: float("inf"),
    "timer_e": lambda c: c.t2,
    "timer_g": lambda c: c.t2,
}


def mermaid(name: str) -> str:
    """A Mermaid state diagram of machine ``name``, generated from its table."""
    lines = ["stateDiagram-v2"]
    first = {"INVITE client": S.CALLING, "INVITE server": S.PROCEEDING}.get(name, S.TRYING)
    lines.append(f"    [*] --> {first.value}")
    for (state, event), (nxt, action) in TABLES[name].items():
        lines.append(f"    {state.value} --> {nxt.value}: {event} / {action}")
    lines.append("    Terminated --> [*]")
    return "\n".join(lines)


def diagrams_markdown() -> str:
    """The text of docs/transactions.md (a test keeps the file equal to this)."""
    out = [
        "# Transaction state machines",
        "",
        "Generated from the transition tables in `telephony/sip/transaction.py` by",
        "`telephony.sip.transaction.diagrams_markdown()`; do not edit by hand. Edges read",
        "`input / action`. A (state, input) pair not drawn here is a protocol error.",
        "",
    ]
    for name in TABLES:
        out += [f"## {name}", "", "```mermaid", mermaid(name), "```", ""]
    return "\n".join(out)


# -- one transaction ------------------------------------------------------------------------------


class Transaction:
    __slots__ = (
        "cancel_pending",
        "data",
        "dest",
        "intervals",
        "key",
        "kind",
        "last_response",
        "merge_key",
        "request",
        "source",
        "state",
        "table",
        "timers",
    )

    def __init__(
        self, kind: str, key: TransactionKey, request: Request, state: State, dest: Endpoint
    ) -> None:
        self.kind = kind
        self.table = TABLES[kind]
        self.key = key
        self.request = request
        self.state = state
        self.dest = dest  # where requests (client) or responses (server) go
        self.source = dest
        self.data = b""  # last bytes sent, for retransmission
        self.last_response: Response | None = None
        self.timers: dict[str, float] = {}  # timer name -> deadline
        self.intervals: dict[str, float] = {}  # current retransmission interval
        self.cancel_pending = False
        self.merge_key: tuple[str, str, int, str] | None = None

    def step(self, event: str) -> tuple[State, str]:
        try:
            nxt, action = self.table[(self.state, event)]
        except KeyError:
            raise ProtocolError(
                f"{self.kind} transaction: {event} not allowed in {self.state.value}", status=500
            ) from None
        return nxt, action


def _response_class(status: int) -> str:
    if status < 200:
        return "1xx"
    return "2xx" if status < 300 else "3xx-6xx"


class TransactionLayer:
    """All transactions of one SIP endpoint. See the module docstring."""

    def __init__(self, config: TimerConfig | None = None) -> None:
        self.config = config or TimerConfig()
        self._client: dict[TransactionKey, Transaction] = {}
        self._server: dict[TransactionKey, Transaction] = {}
        self._merge: dict[tuple[str, str, int, str], TransactionKey] = {}
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._seq = itertools.count()
        self._events: list[Event] = []
        self._out: list[Transmit] = []
        self.dropped = 0  # network inputs the tables say to ignore, or that match nothing

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    def events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def transmits(self) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    # -- timers ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, tx, name = heap[0]
            if tx.timers.get(name) == when and tx.state is not S.TERMINATED:
                return when
            heapq.heappop(heap)  # stale: cancelled, restarted or transaction gone
        return None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, tx, name = heapq.heappop(heap)
            if tx.timers.get(name) != when or tx.state is S.TERMINATED:
                continue
            del tx.timers[name]
            self._fire(tx, name, now)

    def _start(self, tx: Transaction, name: str, interval: float, now: float) -> None:
        when = now + interval
        tx.timers[name] = when
        heapq.heappush(self._heap, (when, next(self._seq), tx, name))

    # -- the machines' actions ----------------------------------------------------------------

    def _fire(self, tx: Transaction, event: str, now: float, msg: Response | None = None) -> None:
        nxt, action = tx.step(event)
        prev = tx.state
        tx.state = nxt
        if action == "resend":
            if tx.data:
                self._out.append(Transmit(tx.data, tx.dest, tx.last_response or tx.request))
            if event in _BACKOFF_CAP:  # a retransmission timer: back off and re-arm
                cap = _BACKOFF_CAP[event](self.config)
                interval = min(tx.intervals.get(event, self.config.t1) * 2, cap)
                tx.intervals[event] = interval
                self._start(tx, event, interval, now)
        elif action in ("pass", "pass+ack") and msg is not None:
            self._events.append(ResponseReceived(msg, tx.source, tx.key))
            if action == "pass+ack":
                self._send_ack(tx, msg)
        elif action == "ack" and msg is not None:
            self._send_ack(tx, msg)
        elif action == "timeout":
            self._events.append(TransactionTimedOut(tx.key, tx.request))
        elif action == "error":
            self._events.append(TransportFailed(tx.key, tx.request))
        if nxt is not prev:
            self._enter(tx, now)

    def _enter(self, tx: Transaction, now: float) -> None:
        if tx.kind == "non-INVITE client" and tx.state is S.PROCEEDING:
            # E keeps retransmitting, now every T2, and F keeps running (RFC 3261 §17.1.2.2)
            tx.intervals["timer_e"] = self.config.t2
            return
        tx.timers.clear()
        if tx.state is S.TERMINATED:
            self._remove(tx)
            return
        for name, interval in _ON_ENTRY.get((tx.kind, tx.state), {}).items():
            value = interval(self.config, tx.dest.reliable)
            if value is not None:
                tx.intervals[name] = value
                self._start(tx, name, value, now)

    def _remove(self, tx: Transaction) -> None:
        table = self._server if tx.kind.endswith("server") else self._client
        if table.get(tx.key) is tx:
            del table[tx.key]
        if tx.merge_key is not None and self._merge.get(tx.merge_key) == tx.key:
            del self._merge[tx.merge_key]

    def _send_ack(self, tx: Transaction, response: Response) -> None:
        ack = make_ack_for_failure(tx.request, response)
        self._out.append(Transmit(ack.to_bytes(), tx.dest, ack))

    # -- client side --------------------------------------------------------------------------

    def send_request(self, request: Request, dest: Endpoint, now: float) -> TransactionKey:
        """Start a client transaction and send ``request``."""
        if request.method == "ACK":
            raise ProtocolError("ACK is not a transaction: use send_stateless", status=500)
        branch = request.top_via.branch
        if not branch:
            raise ProtocolError("request has no Via branch", status=500)
        invite = request.method == "INVITE"
        key: TransactionKey = (branch, request.method)
        if key in self._client:
            raise ProtocolError("a client transaction with this branch exists", status=500)
        kind = "INVITE client" if invite else "non-INVITE client"
        tx = Transaction(kind, key, request, S.CALLING if invite else S.TRYING, dest)
        tx.data = request.to_bytes()
        self._client[key] = tx
        self._out.append(Transmit(tx.data, dest, request))
        self._enter(tx, now)
        return key

    def cancel(self, key: TransactionKey, now: float) -> TransactionKey | None:
        """CANCEL a pending client INVITE (RFC 3261 §9.1). Sent at once when a provisional
        response has arrived, else as soon as one does. Returns the CANCEL's key, or None
        when there is nothing left to cancel (a final response already arrived)."""
        tx = self._client.get(key)
        if tx is None or tx.kind != "INVITE client":
            return None
        cancel_key: TransactionKey = (key[0], "CANCEL")
        if tx.state is S.PROCEEDING:
            if cancel_key not in self._client:
                self._send_cancel(tx, now)
            return cancel_key
        if tx.state is S.CALLING:
            tx.cancel_pending = True
            return cancel_key
        return None

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None:
        """Send outside any transaction: ACK for a 2xx, the UAS core's 2xx retransmissions."""
        self._out.append(Transmit(message.to_bytes(), dest, message))

    def transport_error(self, target: Endpoint | TransactionKey, now: float) -> None:
        """The I/O layer failed to send to an endpoint (or for one transaction)."""
        if isinstance(target, Endpoint):
            txs = [t for t in (*self._client.values(), *self._server.values()) if t.dest == target]
        else:
            found = self._client.get(target) or self._server.get(target)
            txs = [found] if found else []
        for tx in txs:
            self._fire(tx, "transport_error", now)

    def _on_response(self, resp: Response, source: Endpoint, now: float) -> None:
        via = resp.top_via
        key: TransactionKey = (via.branch or "", resp.cseq.method)
        tx = self._client.get(key)
        if tx is None:
            if resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
                self._events.append(ResponseReceived(resp, source, None))
            else:
                self.dropped += 1
            return
        tx.source = source
        if tx.kind == "INVITE client":
            event = _response_class(resp.status)
        else:
            event = "1xx" if resp.status < 200 else "final"
        self._fire(tx, event, now, resp)
        if tx.cancel_pending and tx.state is S.PROCEEDING:
            tx.cancel_pending = False
            self._send_cancel(tx, now)

    def _send_cancel(self, tx: Transaction, now: float) -> None:
        self.send_request(make_cancel(tx.request), tx.dest, now)
        # no final response within 64*T1 of the CANCEL: give the INVITE up (RFC 3261 §9.1)
        self._start(tx, "timer_cancel", 64 * self.config.t1, now)

    # -- server side --------------------------------------------------------------------------

    def _server_key(self, req: Request, method: str) -> TransactionKey:
        via = req.top_via
        if via.is_rfc3261:
            return (via.branch or "", via.sent_by, method)
        return (
            "2543",
            req.call_id,
            req.from_.tag or "",
            str(req.cseq.seq),
            str(via),
            method,
        )

    def _response_dest(self, req: Request, source: Endpoint) -> Endpoint:
        if source.reliable:
            return source
        via = req.top_via
        if via.has_rport:
            return source
        return Endpoint(source.transport, source.host, via.port or 5060)

    def _on_request(self, req: Request, source: Endpoint, now: float) -> None:
        method = req.method
        if method == "ACK":
            tx = self._server.get(self._server_key(req, "INVITE"))
            if tx is None:
                self._events.append(RequestReceived(req, source, None))  # ACK for a 2xx
                return
            _, action = tx.step("ack")
            if action == "pass":
                self._events.append(RequestReceived(req, source, None))
            self._fire(tx, "ack", now)
            return
        key = self._server_key(req, method)
        tx = self._server.get(key)
        if tx is not None:
            self._fire(tx, "request", now)  # a retransmission
            return
        if method == "CANCEL":
            self._on_cancel(req, source, key, now)
            return
        to_tag = req.to.tag
        merge_key = (req.from_.tag or "", req.call_id, req.cseq.seq, method)
        invite = method == "INVITE"
        kind = "INVITE server" if invite else "non-INVITE server"
        tx = Transaction(kind, key, req, S.PROCEEDING if invite else S.TRYING, source)
        tx.dest = self._response_dest(req, source)
        self._server[key] = tx
        if to_tag is None and merge_key in self._merge:
            # same request arrived by another path (RFC 3261 §8.2.2.2)
            self._respond(tx, make_response(req, 482, to_tag=_local_tag(key)), now)
            return
        if to_tag is None:
            tx.merge_key = merge_key
            self._merge[merge_key] = key
        if invite:
            self._respond(tx, make_response(req, 100), now)
        self._events.append(RequestReceived(req, source, key))

    def _on_cancel(self, req: Request, source: Endpoint, key: TransactionKey, now: float) -> None:
        tx = Transaction("non-INVITE server", key, req, S.TRYING, source)
        tx.dest = self._response_dest(req, source)
        self._server[key] = tx
        invite_key = self._server_key(req, "INVITE")
        invite = self._server.get(invite_key)
        if invite is None:
            self._respond(tx, make_response(req, 481, to_tag=_local_tag(key)), now)
            return
        self._respond(tx, make_response(req, 200, to_tag=_local_tag(invite_key)), now)
        if invite.state is S.PROCEEDING:
            self._events.append(CancelReceived(req, source, invite_key))

    def send_response(self, response: Response, now: float) -> None:
        """Send ``response`` through the server transaction it answers."""
        method = response.cseq.method
        via = response.top_via
        if via.is_rfc3261:
            key: TransactionKey = (via.branch or "", via.sent_by, method)
        else:
            key = (
                "2543",
                response.call_id,
                response.from_.tag or "",
                str(response.cseq.seq),
                str(via),
                method,
            )
        tx = self._server.get(key)
        if tx is None:
            raise ProtocolError("no server transaction for this response", status=481)
        self._respond(tx, response, now)

    def _respond(self, tx: Transaction, response: Response, now: float) -> None:
        if tx.kind == "INVITE server":
            event = "send_" + _response_class(response.status)
        else:
            event = "send_1xx" if response.status < 200 else "send_final"
        tx.step(event)  # raises ProtocolError before anything is sent
        tx.last_response = response
        tx.data = response.to_bytes()
        self._out.append(Transmit(tx.data, tx.dest, response))
        self._fire(tx, event, now)

    # -- entry point for the network --------------------------------------------------------

    def receive(self, message: Request | Response, source: Endpoint, now: float) -> None:
        """Feed a parsed message from the network. Never raises for anything the peer sends."""
        try:
            if isinstance(message, Response):
                self._on_response(message, source, now)
            else:
                self._on_request(message, source, now)
        except ProtocolError:
            self.dropped += 1  # an input the tables do not allow: absorb it


def _local_tag(key: TransactionKey) -> str:
    """A To tag for responses the layer sends itself: stable per transaction, so that
    retransmitted answers carry the same tag."""
    return f"tx{abs(hash(key)) % 10**10:010d}"
