"""The SIP transaction layer (RFC 3261 §17 with RFC 6026, §8.2.2.2, §9, §18.2, RFC 3581), sans-IO.

Messages, ``now`` and transport failures go in; :class:`Transmit` records (bytes + destination)
and TU events come out, drained with :meth:`TransactionLayer.transmits` and
:meth:`TransactionLayer.events`. :meth:`get_timer` is the earliest deadline; call
:meth:`handle_timer` when it passes.

Module layout (deviation from the brief's suggested ``txlayer.py``): the I/O layer imports the
whole public API from *this* module, so the layer lives here and the four state machines, their
tables, the shared vocabulary (``Endpoint``, ``TimerConfig``, ``Transmit``, ``TransactionKey``,
the events) and the diagram generator live in :mod:`telephony.sip.txmachines`, re-exported here.

API notes beyond the brief:

- ``TimerConfig`` has a fourth field ``timer_d`` (default 32 s, RFC 3261 "> 32 s").
- ``cancel(key, now)`` returns the CANCEL's key also when the CANCEL is deferred until the first
  provisional; None when a final response already arrived or the transaction is gone. After a
  CANCEL is sent, Timer B (64*T1) runs again on the INVITE transaction (RFC 3261 §9.1): if no
  final response comes, the TU gets :class:`TransactionTimedOut` for the INVITE.
- ``transport_error(key_or_dest, now)`` takes a :class:`TransactionKey` or an :class:`Endpoint`
  (every transaction whose peer is that endpoint is told; a linear scan, failures are rare).
- :class:`Transmit` has a fourth field ``key`` (default None): the transaction that sent it, so
  the I/O layer can report a failed send precisely with ``transport_error(transmit.key, now)``.
- :func:`response_destination` is public so the UAS core can address 2xx retransmissions it
  sends with :meth:`send_stateless` exactly as the transaction would.
- ``receive`` never raises for bad peer input: unmatched or out-of-state messages are dropped and
  counted in ``dropped``. ``send_response``/``send_request``/``cancel`` raise
  :class:`ProtocolError` (status 500, side local) for TU mistakes.
- Timer H also yields :class:`TransactionTimedOut` (for the INVITE server transaction).
"""

from __future__ import annotations

from telephony.sip.errors import ProtocolError, SipError
from telephony.sip.headers import BRANCH_COOKIE, Via, new_tag
from telephony.sip.message import Request, Response, make_cancel, make_response
from telephony.sip.txmachines import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    CancelReceived,
    Endpoint,
    Event,
    Input,
    RequestReceived,
    ResponseReceived,
    State,
    TimerConfig,
    Transaction,
    TransactionCore,
    TransactionKey,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
    mermaid,
)

__all__ = [
    "CancelReceived",
    "Endpoint",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "TimerConfig",
    "TransactionKey",
    "TransactionLayer",
    "TransactionTimedOut",
    "Transmit",
    "TransportFailed",
    "mermaid",
    "response_destination",
]

_MergeKey = tuple[str, str, int, str]


def response_destination(via: Via, source: Endpoint) -> Endpoint:
    """Where responses to a request with top Via ``via`` received from ``source`` go
    (RFC 3261 §18.2.2, RFC 3581): the same connection for reliable transports; otherwise the
    source address, at the source port when the Via asked for rport, else at the Via's sent-by
    port (5060 when it has none)."""
    if source.transport != "udp":
        return source
    if via.has_rport:
        return source
    port = via.port or 5060
    return source if port == source.port else Endpoint(source.transport, source.host, port)


def _response_input(status: int, tu: bool) -> Input:
    if status < 200:
        return Input.TU_PROVISIONAL if tu else Input.PROVISIONAL
    if status < 300:
        return Input.TU_SUCCESS if tu else Input.SUCCESS
    return Input.TU_FAILURE if tu else Input.FAILURE


def _server_key(msg: Request | Response, via: Via, method: str) -> TransactionKey:
    """§17.2.3: branch + sent-by + method for RFC 3261 branches; else the RFC 2543 fields that
    a response also carries (Call-ID, From tag, CSeq number, Via branch and sent-by). The
    Request-URI and To tag are checked after lookup by :meth:`TransactionLayer._matches_2543`."""
    branch = via.branch
    if branch is not None and branch.startswith(BRANCH_COOKIE):
        return TransactionKey(False, branch, via.sent_by, method)
    composite = f"2543|{msg.call_id}|{msg.from_.tag or ''}|{msg.cseq.seq}|{branch or ''}"
    return TransactionKey(False, composite, via.sent_by, method)


class TransactionLayer(TransactionCore):
    """All client and server transactions of one SIP endpoint."""

    def __init__(self, config: TimerConfig | None = None) -> None:
        super().__init__(config)
        self._client: dict[TransactionKey, Transaction] = {}
        self._server: dict[TransactionKey, Transaction] = {}
        # §8.2.2.2: (From tag, Call-ID, CSeq number, CSeq method) of server transactions whose
        # request had no To tag -> their key
        self._merge: dict[_MergeKey, TransactionKey] = {}
        # INVITE server transactions ended by Timer H: late ACKs for their non-2xx are dropped
        self._tombstones: dict[TransactionKey, float] = {}
        self.dropped = 0
        """Messages from the network dropped (unmatched, out of state, or malformed)."""

    def __len__(self) -> int:
        """Live transactions (client + server)."""
        return len(self._client) + len(self._server)

    # -- from the network -------------------------------------------------------------------

    def receive(self, message: Request | Response, source: Endpoint, now: float) -> None:
        """Feed a parsed message from ``source``. Never raises for bad input: drops it."""
        try:
            if isinstance(message, Response):
                self._receive_response(message, source, now)
            else:
                self._receive_request(message, source, now)
        except SipError:
            self.dropped += 1
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.handle_timer(now)

    def _receive_response(self, response: Response, source: Endpoint, now: float) -> None:
        via = response.top_via
        key = TransactionKey(True, via.branch or "", "", response.cseq.method)
        tx = self._client.get(key)
        status = response.status
        if tx is None:
            if 200 <= status < 300 and key.method == "INVITE":
                # a retransmitted 2xx after Timer M (or a fork's 2xx): the UAC core ACKs it
                self._events.append(ResponseReceived(response, source, None))
            else:
                self.dropped += 1
            return
        tx.handle(_response_input(status, False), response, source, now)

    def _receive_request(self, request: Request, source: Endpoint, now: float) -> None:
        method = request.method
        via = request.top_via
        is_ack = method == "ACK"
        key = _server_key(request, via, "INVITE" if is_ack else method)
        tx = self._server.get(key)
        if tx is not None and (key.branch[0] != "2" or self._matches_2543(tx, request)):
            tx.handle(Input.ACK if is_ack else Input.REQUEST, request, source, now)
            return
        if is_ack:
            if self._tombstones and self._tombstoned(key, now):
                self.dropped += 1
            else:
                self._events.append(RequestReceived(request, source, None))
            return
        if tx is not None:
            # RFC 2543 key collision with a different Request-URI or To tag: ambiguous, drop
            self.dropped += 1
            return
        via = self._stamp_via(request, via, source)
        peer = response_destination(via, source)
        if method == "CANCEL":
            self._receive_cancel(request, key, source, peer, now)
            return
        merge_key: _MergeKey | None = None
        if request.to.tag is None:
            cseq = request.cseq
            merge_key = (request.from_.tag or "", request.call_id, cseq.seq, cseq.method)
            if merge_key in self._merge:
                # §8.2.2.2 merged request (a fork looped back to us): 482, not for the TU
                self._answer_alone(
                    make_response(request, 482, to_tag=new_tag()), request, key, peer, now
                )
                return
        machine = INVITE_SERVER if method == "INVITE" else NON_INVITE_SERVER
        tx = Transaction(self, machine, key, request, peer)
        self._server[key] = tx
        if merge_key is not None:
            tx.merge_key = merge_key
            self._merge[merge_key] = key
        self._events.append(RequestReceived(request, source, key))
        tx.handle(Input.START, None, None, now)

    def _matches_2543(self, tx: Transaction, request: Request) -> bool:
        """The checks of §17.2.3 an RFC 2543 key cannot hold: Request-URI and To tag (the ACK's
        To tag must be the one of the response the transaction sent)."""
        if request.uri != tx.request.uri:
            return False
        if request.method == "ACK":
            last = tx.last_response
            return last is not None and request.to.tag == last.to.tag
        return request.to.tag == tx.request.to.tag

    def _stamp_via(self, request: Request, via: Via, source: Endpoint) -> Via:
        """§18.2.1 / RFC 3581: add ``received`` when the sent-by host is not the source address
        and fill an empty ``rport`` with the source port, in the request's own top Via, so that
        responses built from it carry them."""
        host = via.host
        if host[:1] == "[":
            host = host[1:-1]
        fill_rport = via.has_rport and via.rport is None
        if host == source.host and not fill_rport:
            return via
        params = [
            (k, str(source.port) if fill_rport and k == "rport" else v)
            for k, v in via.params
            if k != "received"
        ]
        params.append(("received", source.host))
        stamped = Via(via.transport, via.host, via.port, tuple(params))
        headers = request.headers
        vias = request.via
        line = headers._idx()["via"][0]
        name, value = headers._items[line]
        if "," not in value:
            # one Via per line (the usual case): rewrite it in place; the index and the other
            # parsed headers stay valid
            headers._items[line] = (name, str(stamped))
        else:
            cache = dict(headers._cache)
            headers.pop_first("via")
            headers.add("Via", str(stamped), first=True)
            headers._cache.update(cache)
        headers._cache["via"] = [stamped, *vias[1:]]
        return stamped

    def _receive_cancel(
        self,
        cancel: Request,
        key: TransactionKey,
        source: Endpoint,
        peer: Endpoint,
        now: float,
    ) -> None:
        """§9.2: answer the CANCEL ourselves: 200 when it matches an INVITE server transaction
        (and tell the TU when that one is still pending), else 481."""
        invite = self._server.get(key._replace(method="INVITE"))
        if invite is not None and key.branch[0] == "2":
            last = invite.request
            if cancel.uri != last.uri or cancel.to.tag != last.to.tag:
                invite = None
        if invite is None:
            self._answer_alone(make_response(cancel, 481, to_tag=new_tag()), cancel, key, peer, now)
            return
        last_response = invite.last_response
        tag = last_response.to.tag if last_response is not None else None
        self._answer_alone(
            make_response(cancel, 200, to_tag=tag or new_tag()), cancel, key, peer, now
        )
        if invite.state is State.PROCEEDING:
            self._events.append(CancelReceived(cancel, source, invite.key))

    def _answer_alone(
        self, response: Response, request: Request, key: TransactionKey, peer: Endpoint, now: float
    ) -> None:
        """Answer ``request`` with ``response`` from the layer, through a server transaction of
        its own (so that retransmissions get the same answer), without involving the TU."""
        machine = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        tx = Transaction(self, machine, key, request, peer)
        self._server[key] = tx
        tx.handle(Input.START, None, None, now)
        tx.handle(_response_input(response.status, True), response, None, now)

    def _tombstoned(self, key: TransactionKey, now: float) -> bool:
        expiry = self._tombstones.get(key)
        return expiry is not None and expiry > now

    # -- from the TU ------------------------------------------------------------------------

    def send_request(self, request: Request, dest: Endpoint, now: float) -> TransactionKey:
        """Start a client transaction (INVITE or non-INVITE) sending ``request`` to ``dest``.
        An ACK is not a transaction: send an ACK for a 2xx with :meth:`send_stateless`.
        Raises ProtocolError for an ACK, a top Via without an RFC 3261 branch, or a reused
        branch."""
        method = request.method
        if method == "ACK":
            raise ProtocolError("ACK is not a transaction: use send_stateless")
        try:
            branch = request.top_via.branch
        except SipError as err:
            raise ProtocolError(f"request without a usable Via: {err.reason}") from err
        if branch is None or not branch.startswith(BRANCH_COOKIE):
            raise ProtocolError("client requests need an RFC 3261 branch (new_branch())")
        key = TransactionKey(True, branch, "", method)
        if key in self._client:
            raise ProtocolError("a client transaction with this branch already exists")
        machine = INVITE_CLIENT if method == "INVITE" else NON_INVITE_CLIENT
        tx = Transaction(self, machine, key, request, dest)
        self._client[key] = tx
        tx.handle(Input.START, None, None, now)
        return key

    def send_response(self, response: Response, now: float) -> None:
        """Send ``response`` through the server transaction matching its top Via (branch,
        sent-by) and CSeq method. Raises ProtocolError when there is none, or when the
        transaction's state does not allow this response (e.g. a second final)."""
        try:
            key = _server_key(response, response.top_via, response.cseq.method)
        except SipError as err:
            raise ProtocolError(f"response without usable Via/CSeq: {err.reason}") from err
        tx = self._server.get(key)
        if tx is None:
            raise ProtocolError("no server transaction for this response")
        tx.handle(_response_input(response.status, True), response, None, now)
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.handle_timer(now)

    def send_stateless(self, message: Request | Response, dest: Endpoint) -> None:
        """Send outside any transaction: the ACK for a 2xx, 2xx retransmissions by the UAS
        core (address them with :func:`response_destination`)."""
        self._transmits.append(Transmit(message.to_bytes(), dest, message))

    def cancel(self, key: TransactionKey, now: float) -> TransactionKey | None:
        """CANCEL the client INVITE transaction ``key`` (RFC 3261 §9.1). Sent at once in
        Proceeding; in Calling it waits for the first provisional response. Returns the key
        the CANCEL's own client transaction has (or will have); the same key again when called
        twice; None when a final response already arrived or ``key`` is gone."""
        if not key.client or key.method != "INVITE":
            raise ProtocolError("only client INVITE transactions can be cancelled")
        tx = self._client.get(key)
        if tx is None or tx.state not in (State.CALLING, State.PROCEEDING):
            return None
        cancel_key = key._replace(method="CANCEL")
        if tx.cancel == 0:
            if tx.state is State.PROCEEDING:
                self._send_pending_cancel(tx, now)
            else:
                tx.cancel = 1
        return cancel_key

    def transport_error(self, key_or_dest: TransactionKey | Endpoint, now: float) -> None:
        """The I/O layer could not send: to one transaction's peer (a key) or to an endpoint
        (every transaction whose peer it is). Unknown keys are ignored."""
        if isinstance(key_or_dest, Endpoint):
            txs = [
                tx
                for table in (self._client, self._server)
                for tx in table.values()
                if tx.peer == key_or_dest
            ]
        else:
            table = self._client if key_or_dest.client else self._server
            one = table.get(key_or_dest)
            txs = [] if one is None else [one]
        for tx in txs:
            if tx.state is not State.TERMINATED:
                tx.handle(Input.TRANSPORT_ERROR, None, None, now)
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.handle_timer(now)

    # -- hooks from the machines ------------------------------------------------------------

    def _terminated(self, tx: Transaction, cause: Input, now: float) -> None:
        self._disarm_all(tx)
        key = tx.key
        if key.client:
            del self._client[key]
            return
        del self._server[key]
        merge_key = tx.merge_key
        if merge_key is not None and self._merge.get(merge_key) == key:
            del self._merge[merge_key]

    def _send_pending_cancel(self, tx: Transaction, now: float) -> None:
        tx.cancel = 2
        cancel = make_cancel(tx.request)
        cancel_key = tx.key._replace(method="CANCEL")
        if cancel_key not in self._client:
            ctx = Transaction(self, NON_INVITE_CLIENT, cancel_key, cancel, tx.peer)
            self._client[cancel_key] = ctx
            ctx.handle(Input.START, None, None, now)
        # §9.1: no final response within 64*T1 of the CANCEL -> give the INVITE up
        self._arm(tx, Input.TIMER_B, self.config.timeout, now)

    def _keep_tombstone(self, tx: Transaction, now: float) -> None:
        if not tx.reliable:
            tombstones = self._tombstones
            if len(tombstones) >= 1024:
                self._tombstones = tombstones = {k: t for k, t in tombstones.items() if t > now}
            tombstones[tx.key] = now + self.config.t4
