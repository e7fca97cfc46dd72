"""The four RFC 3261 §17 transaction state machines (with RFC 6026), as transition tables.

This module holds the vocabulary shared with the I/O layer (:class:`Endpoint`, :class:`TimerConfig`,
:class:`Transmit`, :class:`TransactionKey`, the TU events) and the machines themselves. The
:class:`~telephony.sip.transaction.TransactionLayer` (matching, CANCEL, merged requests, routing)
lives in :mod:`telephony.sip.transaction` and re-exports everything public from here.

Each machine is ONE table ``{(state, input): Step(target, actions)}``. A pair that is not in the
table raises :class:`ProtocolError`, except the pairs in the machine's documented ``ignored`` set
(reordered or duplicated datagrams the RFC does not mention, transport errors with nothing pending),
which are dropped without effect. :func:`mermaid` renders the tables into ``docs/transactions.md``.

Timers are armed on a heap owned by :class:`TransactionCore`; stopping a timer only forgets its
sequence number, so a stale heap entry is skipped when popped (and the heap is compacted when stale
entries dominate). A timer whose duration is 0 (D, I, J, K on reliable transports) is armed at
``now`` and fired before the layer call that armed it returns.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from telephony.sip.errors import ProtocolError
from telephony.sip.message import Request, Response, make_ack_for_failure, make_response

# -- shared vocabulary ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a message came from or goes to. ``transport`` is lower-case: udp, tcp or tls."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True for stream transports: no retransmission timers, zero-length D/I/J/K."""
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 timer base values in seconds (§17.1.1.1, table 4). Everything else is derived:
    B, F, H, L, M and J (unreliable) are 64*T1; I and K (unreliable) are T4; D (unreliable) is
    ``timer_d`` (the RFC's "> 32 s"). On reliable transports D, I, J and K are 0."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, L, M, and J on unreliable transports."""
        return 64 * self.t1


class TransactionKey(NamedTuple):
    """Identifies one transaction inside a layer.

    ``client`` tells client from server transactions. RFC 3261 keys are the top Via ``branch``,
    ``sent_by`` (servers only; "" for clients) and the CSeq ``method`` (ACK maps to INVITE). For
    requests without the magic cookie (RFC 2543) ``branch`` is a composite of Call-ID, From tag,
    CSeq number and the Via branch; the Request-URI and To tag are checked after lookup.
    """

    client: bool
    branch: str
    sent_by: str
    method: str


@dataclass(frozen=True, slots=True)
class Transmit:
    """Bytes the I/O layer must send. ``message`` is what ``data`` serializes (for logging and
    for the transport's connection choice); the same Transmit is reused for retransmissions.
    ``key`` names the transaction that sent it (None for stateless sends): report a failure to
    send it with ``transport_error(key, now)``."""

    data: bytes
    dest: Endpoint
    message: Request | Response
    key: TransactionKey | None = None


# -- events to the transaction user ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request arrived. ``key`` names the server transaction created for it, which the
    TU answers with :meth:`TransactionLayer.send_response`. An ACK has no server transaction of
    its own: an ACK for a 2xx (or any ACK matching no transaction) arrives with ``key=None``."""

    request: Request
    source: Endpoint
    key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the client transaction ``key``: provisional, final, and 2xx
    retransmissions absorbed in the Accepted state (RFC 6026), which the TU must see to re-ACK.
    A 2xx to an INVITE matching no transaction arrives with ``key=None`` for the same reason."""

    response: Response
    source: Endpoint
    key: TransactionKey | None


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B or F fired on client transaction ``key`` (the TU treats it as a 408), Timer B
    fired 64*T1 after a CANCEL got no final response for the INVITE (RFC 3261 §9.1), or Timer
    H fired on an INVITE server transaction (the ACK for its non-2xx final never came)."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The I/O layer reported a send failure affecting transaction ``key``, which is now
    terminated (or, for an INVITE server transaction in Accepted, still absorbing)."""

    key: TransactionKey
    request: Request


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL matched the INVITE server transaction ``invite_key`` still in Proceeding. The
    layer has already answered the CANCEL with 200; the TU decides whether to answer the INVITE
    with 487. (A CANCEL matching nothing was answered 481 by the layer and is not reported.)"""

    cancel: Request
    source: Endpoint
    invite_key: TransactionKey


Event = RequestReceived | ResponseReceived | TransactionTimedOut | TransportFailed | CancelReceived


# -- machine vocabulary ---------------------------------------------------------------------


class State(StrEnum):
    INITIAL = "Initial"
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(StrEnum):
    """What can happen to a transaction."""

    START = "start"
    # responses from the network (client transactions)
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    # requests from the network (server transactions)
    REQUEST = "request"
    ACK = "ACK"
    # responses from the TU (server transactions)
    TU_PROVISIONAL = "TU 1xx"
    TU_SUCCESS = "TU 2xx"
    TU_FAILURE = "TU 3xx-6xx"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"


# Inputs the TU or the layer itself causes; unlisted pairs with these are local bugs.
LOCAL_INPUTS = frozenset(
    {Input.START, Input.TU_PROVISIONAL, Input.TU_SUCCESS, Input.TU_FAILURE}
    | {i for i in Input if i.name.startswith("TIMER_")}
)

Message = Request | Response
Action = Callable[["Transaction", Message | None, Endpoint | None, float], None]


class Step(NamedTuple):
    target: State
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Machine:
    """One transaction state machine: its table and its documented ignore list."""

    name: str
    table: Mapping[tuple[State, Input], Step]
    ignored: frozenset[tuple[State, Input]]

    @property
    def states(self) -> list[State]:
        seen = {State.INITIAL}
        for state, _ in self.table:
            seen.add(state)
        for step in self.table.values():
            seen.add(step.target)
        return [s for s in State if s in seen]


# -- transactions ---------------------------------------------------------------------------


#: states in which a transaction only absorbs retransmissions until a timer ends it (up to 64*T1)
_WAITING = frozenset({State.COMPLETED, State.CONFIRMED, State.ACCEPTED})
#: how long after reaching such a state its messages are shrunk (the TU has read them by then)
SHRINK_AFTER = 2.0


class Transaction:
    """One transaction: which machine, its state, and what it needs to retransmit."""

    __slots__ = (
        "ack_sent",
        "cancel",
        "core",
        "interval",
        "key",
        "last_response",
        "last_sent",
        "machine",
        "merge_key",
        "peer",
        "reliable",
        "request",
        "request_sent",
        "state",
        "timers",
    )

    def __init__(
        self,
        core: TransactionCore,
        machine: Machine,
        key: TransactionKey,
        request: Request,
        peer: Endpoint,
    ) -> None:
        self.core = core
        self.machine = machine
        self.key = key
        self.request = request
        # client: where requests go; server: where responses go (§18.2.2)
        self.peer = peer
        self.reliable = peer.transport != "udp"
        self.state = State.INITIAL
        # what was sent, kept as the Transmit itself so that retransmitting costs no allocation
        self.request_sent: Transmit | None = None
        self.ack_sent: Transmit | None = None
        self.last_sent: Transmit | None = None
        self.last_response: Response | None = None
        self.interval = 0.0  # current A / E / G interval
        self.timers: dict[Input, int] = {}  # armed timer -> heap sequence number
        # client INVITE: 0 none, 1 pending until a 1xx, 2 sent
        self.cancel = 0
        self.merge_key: tuple[str, str, int, str] | None = None

    def handle(self, inp: Input, msg: Message | None, source: Endpoint | None, now: float) -> None:
        """Apply ``inp`` through the machine's table. Raises :class:`ProtocolError` for an
        unlisted, non-ignored pair (status 500/local for TU and timer inputs, 400/peer else)."""
        state = self.state
        step = self.machine.table.get((state, inp))
        if step is None:
            if (state, inp) in self.machine.ignored:
                return
            if inp in LOCAL_INPUTS:
                raise ProtocolError(f"{self.machine.name}: {inp} not allowed in {state}")
            raise ProtocolError(
                f"{self.machine.name}: {inp} not allowed in {state}", status=400, side="peer"
            )
        self.state = step.target
        for action in step.actions:
            action(self, msg, source, now)
        if step.target is State.TERMINATED:
            self.core._terminated(self, inp, now)
        elif step.target in _WAITING and state is not step.target:
            self.core._settling.append((now + SHRINK_AFTER, self))

    def shrink(self) -> None:
        """Keep only the text of the messages this transaction holds (see
        :meth:`Headers.shrink`); called once it has waited ``SHRINK_AFTER`` in a final state."""
        self.request.headers.shrink()
        if self.last_response is not None:
            self.last_response.headers.shrink()
        for sent in (self.ack_sent, self.last_sent, self.request_sent):
            if sent is not None:
                sent.message.headers.shrink()

    def __repr__(self) -> str:
        return f"<Transaction {self.machine.name} {self.state} {self.key.branch}>"


class TransactionCore:
    """Outputs and timers shared by all transactions of a layer: the part of the layer the
    machines' actions talk to. :class:`~telephony.sip.transaction.TransactionLayer` extends it."""

    def __init__(self, config: TimerConfig | None = None) -> None:
        self.config = config if config is not None else TimerConfig()
        self._transmits: list[Transmit] = []
        self._events: list[Event] = []
        self._heap: list[tuple[float, int, Transaction, Input]] = []
        self._seq = 0
        self._stale = 0
        # transactions that reached a final state, to shrink once the TU is done reading them
        self._settling: deque[tuple[float, Transaction]] = deque()

    # -- outputs ----------------------------------------------------------------------------

    def events(self) -> list[Event]:
        """Drain the TU events produced so far (in order)."""
        out = self._events
        self._events = []
        return out

    def transmits(self) -> list[Transmit]:
        """Drain the datagrams/segments to send (in order)."""
        out = self._transmits
        self._transmits = []
        return out

    # -- timers -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """Earliest pending deadline over all transactions, or None."""
        heap = self._heap
        while heap:
            _, seq, tx, timer = heap[0]
            if tx.timers.get(timer) == seq:
                return heap[0][0]
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (in deadline order)."""
        settling = self._settling
        while settling and settling[0][0] <= now:
            tx = settling.popleft()[1]
            if tx.state is not State.TERMINATED:
                tx.shrink()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, tx, timer = heapq.heappop(heap)
            timers = tx.timers
            if timers.get(timer) != seq:
                self._stale -= 1
                continue
            del timers[timer]
            tx.handle(timer, None, None, now)

    def _arm(self, tx: Transaction, timer: Input, delay: float, now: float) -> None:
        self._seq = seq = self._seq + 1
        if timer in tx.timers:
            self._stale += 1
        tx.timers[timer] = seq
        heapq.heappush(self._heap, (now + delay, seq, tx, timer))

    def _disarm_all(self, tx: Transaction) -> None:
        if tx.timers:
            self._stale += len(tx.timers)
            tx.timers.clear()
            heap = self._heap
            if self._stale > 4096 and self._stale * 2 > len(heap):
                heap[:] = [e for e in heap if e[2].timers.get(e[3]) == e[1]]
                heapq.heapify(heap)
                self._stale = 0

    # -- hooks the layer overrides ----------------------------------------------------------

    def _terminated(self, tx: Transaction, cause: Input, now: float) -> None:
        """``tx`` reached Terminated because of ``cause``."""
        self._disarm_all(tx)

    def _send_pending_cancel(self, tx: Transaction, now: float) -> None:
        """A client INVITE transaction with a deferred CANCEL got its first provisional."""

    def _keep_tombstone(self, tx: Transaction, now: float) -> None:
        """Timer H fired: late ACKs for this transaction's non-2xx must still be dropped."""


# -- actions --------------------------------------------------------------------------------

LABELS: dict[Action, str] = {}


def _label(text: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        LABELS[fn] = text
        return fn

    return register


@_label("send request")
def _send_request(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    req = tx.request
    tx.request_sent = out = Transmit(req.to_bytes(), tx.peer, req, tx.key)
    tx.core._transmits.append(out)


@_label("retransmit")
def _retransmit(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert tx.request_sent is not None
    tx.core._transmits.append(tx.request_sent)


@_label("to TU")
def _pass_up(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert isinstance(msg, Response) and src is not None
    tx.core._events.append(ResponseReceived(msg, src, tx.key))


@_label("send ACK")
def _send_ack(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert isinstance(msg, Response)
    ack = make_ack_for_failure(tx.request, msg)
    tx.ack_sent = out = Transmit(ack.to_bytes(), tx.peer, ack, tx.key)
    tx.core._transmits.append(out)


@_label("resend ACK")
def _resend_ack(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert tx.ack_sent is not None
    tx.core._transmits.append(tx.ack_sent)


@_label("send pending CANCEL")
def _pending_cancel(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    if tx.cancel == 1:
        tx.core._send_pending_cancel(tx, now)


@_label("send 100")
def _send_trying(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    resp = make_response(tx.request, 100)
    tx.last_response = resp
    tx.last_sent = out = Transmit(resp.to_bytes(), tx.peer, resp, tx.key)
    tx.core._transmits.append(out)


@_label("send")
def _send_response(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert isinstance(msg, Response)
    tx.last_response = msg
    tx.last_sent = out = Transmit(msg.to_bytes(), tx.peer, msg, tx.key)
    tx.core._transmits.append(out)


@_label("resend last response")
def _resend(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    if tx.last_sent is not None:
        tx.core._transmits.append(tx.last_sent)


@_label("ACK to TU")
def _ack_up(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    assert isinstance(msg, Request) and src is not None
    tx.core._events.append(RequestReceived(msg, src, None))


@_label("report timeout")
def _timed_out(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    tx.core._events.append(TransactionTimedOut(tx.key, tx.request))


@_label("report transport failure")
def _failed(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    tx.core._events.append(TransportFailed(tx.key, tx.request))


@_label("keep tombstone")
def _tombstone(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    tx.core._keep_tombstone(tx, now)


@_label("stop timers")
def _stop(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
    tx.core._disarm_all(tx)


def _start(timer: Input) -> Action:
    """Arm ``timer`` with its RFC 3261 duration for this transaction's transport."""
    retransmit = timer in (Input.TIMER_A, Input.TIMER_E, Input.TIMER_G)
    zero_if_reliable = timer in (Input.TIMER_D, Input.TIMER_I, Input.TIMER_J, Input.TIMER_K)

    def start(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
        cfg = tx.core.config
        if retransmit:
            if tx.reliable:
                return
            tx.interval = delay = cfg.t1
        elif zero_if_reliable and tx.reliable:
            delay = 0.0
        elif timer is Input.TIMER_D:
            delay = cfg.timer_d
        elif timer in (Input.TIMER_I, Input.TIMER_K):
            delay = cfg.t4
        else:
            delay = 64 * cfg.t1
        tx.core._arm(tx, timer, delay, now)

    letter = timer.value[-1]
    LABELS[start] = f"start {letter} (unreliable)" if retransmit else f"start {letter}"
    return start


def _again(timer: Input, how: str) -> Action:
    """Re-arm a retransmission timer: ``double`` (A), ``capped`` at T2 (E, G) or ``t2`` (E in
    Proceeding)."""

    def again(tx: Transaction, msg: Message | None, src: Endpoint | None, now: float) -> None:
        if tx.reliable:
            return
        t2 = tx.core.config.t2
        if how == "double":
            tx.interval *= 2
        elif how == "capped":
            tx.interval = min(tx.interval * 2, t2)
        else:
            tx.interval = t2
        tx.core._arm(tx, timer, tx.interval, now)

    letter = timer.value[-1]
    LABELS[again] = {
        "double": f"double {letter}",
        "capped": f"double {letter} up to T2",
        "t2": f"{letter} = T2",
    }[how]
    return again


# -- the four tables ------------------------------------------------------------------------

S = State
I = Input  # noqa: E741

INVITE_CLIENT = Machine(
    "INVITE client",
    {
        (S.INITIAL, I.START): Step(
            S.CALLING, (_send_request, _start(I.TIMER_A), _start(I.TIMER_B))
        ),
        (S.CALLING, I.TIMER_A): Step(S.CALLING, (_retransmit, _again(I.TIMER_A, "double"))),
        (S.CALLING, I.TIMER_B): Step(S.TERMINATED, (_timed_out,)),
        (S.CALLING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.CALLING, I.PROVISIONAL): Step(S.PROCEEDING, (_stop, _pass_up, _pending_cancel)),
        (S.CALLING, I.SUCCESS): Step(S.ACCEPTED, (_stop, _pass_up, _start(I.TIMER_M))),
        (S.CALLING, I.FAILURE): Step(S.COMPLETED, (_stop, _pass_up, _send_ack, _start(I.TIMER_D))),
        (S.PROCEEDING, I.PROVISIONAL): Step(S.PROCEEDING, (_pass_up,)),
        (S.PROCEEDING, I.SUCCESS): Step(S.ACCEPTED, (_stop, _pass_up, _start(I.TIMER_M))),
        (S.PROCEEDING, I.FAILURE): Step(
            S.COMPLETED, (_stop, _pass_up, _send_ack, _start(I.TIMER_D))
        ),
        # Timer B runs in Proceeding only after a CANCEL was sent (RFC 3261 §9.1).
        (S.PROCEEDING, I.TIMER_B): Step(S.TERMINATED, (_timed_out,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.COMPLETED, I.FAILURE): Step(S.COMPLETED, (_resend_ack,)),
        # a 2xx after a non-2xx final: the TU must still see it to ACK and BYE it
        (S.COMPLETED, I.SUCCESS): Step(S.COMPLETED, (_pass_up,)),
        (S.COMPLETED, I.TIMER_D): Step(S.TERMINATED),
        (S.COMPLETED, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.ACCEPTED, I.SUCCESS): Step(S.ACCEPTED, (_pass_up,)),
        (S.ACCEPTED, I.TIMER_M): Step(S.TERMINATED),
    },
    frozenset(
        {
            (S.COMPLETED, I.PROVISIONAL),
            (S.ACCEPTED, I.PROVISIONAL),
            (S.ACCEPTED, I.FAILURE),
            (S.ACCEPTED, I.TRANSPORT_ERROR),
        }
    ),
)

_NI_FINAL = (_stop, _pass_up, _start(I.TIMER_K))

NON_INVITE_CLIENT = Machine(
    "non-INVITE client",
    {
        (S.INITIAL, I.START): Step(S.TRYING, (_send_request, _start(I.TIMER_E), _start(I.TIMER_F))),
        (S.TRYING, I.TIMER_E): Step(S.TRYING, (_retransmit, _again(I.TIMER_E, "capped"))),
        (S.TRYING, I.TIMER_F): Step(S.TERMINATED, (_timed_out,)),
        (S.TRYING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.TRYING, I.PROVISIONAL): Step(S.PROCEEDING, (_pass_up,)),
        (S.TRYING, I.SUCCESS): Step(S.COMPLETED, _NI_FINAL),
        (S.TRYING, I.FAILURE): Step(S.COMPLETED, _NI_FINAL),
        (S.PROCEEDING, I.TIMER_E): Step(S.PROCEEDING, (_retransmit, _again(I.TIMER_E, "t2"))),
        (S.PROCEEDING, I.TIMER_F): Step(S.TERMINATED, (_timed_out,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.PROCEEDING, I.PROVISIONAL): Step(S.PROCEEDING, (_pass_up,)),
        (S.PROCEEDING, I.SUCCESS): Step(S.COMPLETED, _NI_FINAL),
        (S.PROCEEDING, I.FAILURE): Step(S.COMPLETED, _NI_FINAL),
        (S.COMPLETED, I.PROVISIONAL): Step(S.COMPLETED),
        (S.COMPLETED, I.SUCCESS): Step(S.COMPLETED),
        (S.COMPLETED, I.FAILURE): Step(S.COMPLETED),
        (S.COMPLETED, I.TIMER_K): Step(S.TERMINATED),
    },
    frozenset({(S.COMPLETED, I.TRANSPORT_ERROR)}),
)

INVITE_SERVER = Machine(
    "INVITE server",
    {
        (S.INITIAL, I.START): Step(S.PROCEEDING, (_send_trying,)),
        (S.PROCEEDING, I.REQUEST): Step(S.PROCEEDING, (_resend,)),
        (S.PROCEEDING, I.TU_PROVISIONAL): Step(S.PROCEEDING, (_send_response,)),
        (S.PROCEEDING, I.TU_SUCCESS): Step(S.ACCEPTED, (_send_response, _start(I.TIMER_L))),
        (S.PROCEEDING, I.TU_FAILURE): Step(
            S.COMPLETED, (_send_response, _start(I.TIMER_G), _start(I.TIMER_H))
        ),
        (S.PROCEEDING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.COMPLETED, I.REQUEST): Step(S.COMPLETED, (_resend,)),
        (S.COMPLETED, I.ACK): Step(S.CONFIRMED, (_stop, _start(I.TIMER_I))),
        (S.COMPLETED, I.TIMER_G): Step(S.COMPLETED, (_resend, _again(I.TIMER_G, "capped"))),
        (S.COMPLETED, I.TIMER_H): Step(S.TERMINATED, (_timed_out, _tombstone)),
        (S.COMPLETED, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.CONFIRMED, I.ACK): Step(S.CONFIRMED),
        (S.CONFIRMED, I.TIMER_I): Step(S.TERMINATED),
        (S.ACCEPTED, I.REQUEST): Step(S.ACCEPTED),
        (S.ACCEPTED, I.ACK): Step(S.ACCEPTED, (_ack_up,)),
        (S.ACCEPTED, I.TU_SUCCESS): Step(S.ACCEPTED, (_send_response,)),
        (S.ACCEPTED, I.TRANSPORT_ERROR): Step(S.ACCEPTED, (_failed,)),
        (S.ACCEPTED, I.TIMER_L): Step(S.TERMINATED),
    },
    frozenset({(S.CONFIRMED, I.REQUEST), (S.CONFIRMED, I.TRANSPORT_ERROR)}),
)

_NIS_FINAL = (_send_response, _start(I.TIMER_J))

NON_INVITE_SERVER = Machine(
    "non-INVITE server",
    {
        (S.INITIAL, I.START): Step(S.TRYING),
        (S.TRYING, I.REQUEST): Step(S.TRYING),
        (S.TRYING, I.TU_PROVISIONAL): Step(S.PROCEEDING, (_send_response,)),
        (S.TRYING, I.TU_SUCCESS): Step(S.COMPLETED, _NIS_FINAL),
        (S.TRYING, I.TU_FAILURE): Step(S.COMPLETED, _NIS_FINAL),
        (S.TRYING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.PROCEEDING, I.REQUEST): Step(S.PROCEEDING, (_resend,)),
        (S.PROCEEDING, I.TU_PROVISIONAL): Step(S.PROCEEDING, (_send_response,)),
        (S.PROCEEDING, I.TU_SUCCESS): Step(S.COMPLETED, _NIS_FINAL),
        (S.PROCEEDING, I.TU_FAILURE): Step(S.COMPLETED, _NIS_FINAL),
        (S.PROCEEDING, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
        (S.COMPLETED, I.REQUEST): Step(S.COMPLETED, (_resend,)),
        (S.COMPLETED, I.TIMER_J): Step(S.TERMINATED),
        (S.COMPLETED, I.TRANSPORT_ERROR): Step(S.TERMINATED, (_failed,)),
    },
    frozenset(),
)

MACHINES = (INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER)


# -- the diagram ----------------------------------------------------------------------------


def _mermaid_name(state: State) -> str:
    return "[*]" if state is State.INITIAL else state.value


def mermaid() -> str:
    """``docs/transactions.md``: one Mermaid stateDiagram per machine, generated from the
    tables above, followed by each machine's ignore list. Regenerate with
    ``python -m telephony.sip.txmachines > docs/transactions.md``."""
    out = [
        "# SIP transaction state machines",
        "",
        "Generated from the transition tables in `telephony/sip/txmachines.py` by",
        "`telephony.sip.txmachines.mermaid()` (RFC 3261 §17 with RFC 6026). Do not edit by hand:",
        "`python -m telephony.sip.txmachines > docs/transactions.md`.",
        "",
        "Edges read `input / actions`. A (state, input) pair with no edge and not in the",
        "ignore list is a `ProtocolError`. Reliable transports never start A, E or G, and run",
        "D, I, J and K with a zero duration. Timer B runs in Proceeding only when the layer",
        "has sent a CANCEL for the INVITE (RFC 3261 §9.1: give up 64*T1 later).",
    ]
    for m in MACHINES:
        out += ["", f"## {m.name} transaction", "", "```mermaid", "stateDiagram-v2"]
        for (state, inp), step in m.table.items():
            actions = ", ".join(LABELS[a] for a in step.actions)
            label = f"{inp.value} / {actions}" if actions else inp.value
            out.append(f"    {_mermaid_name(state)} --> {_mermaid_name(step.target)} : {label}")
        out.append("    Terminated --> [*]")
        out.append("```")
        out.append("")
        if m.ignored:
            out.append("Ignored without effect:")
            out.append("")
            for state, inp in sorted(m.ignored):
                out.append(f"- {inp.value} in {state.value}")
        else:
            out.append("Ignored without effect: nothing.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(mermaid(), end="")
