"""The four transaction tables: every (state, input) pair, random input sequences, the diagram."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from telephony.sip import (
    NameAddr,
    ProtocolError,
    Request,
    Response,
    Via,
    make_request,
    make_response,
    new_branch,
    parse_uri,
)
from telephony.sip.txmachines import (
    INVITE_CLIENT,
    INVITE_SERVER,
    LOCAL_INPUTS,
    MACHINES,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Endpoint,
    Input,
    Machine,
    RequestReceived,
    ResponseReceived,
    State,
    Step,
    TimerConfig,
    Transaction,
    TransactionCore,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
    mermaid,
)

PEER = Endpoint("udp", "127.0.0.1", 5080)
CLIENTS = (INVITE_CLIENT, NON_INVITE_CLIENT)
SERVERS = (INVITE_SERVER, NON_INVITE_SERVER)


def _request(method: str) -> Request:
    uri = parse_uri("sip:988@127.0.0.1:5080")
    return make_request(
        method,
        uri,
        via=Via("UDP", "127.0.0.1", 5070, (("branch", new_branch()),)),
        from_=NameAddr(uri, params=(("tag", "f"),)),
        to=NameAddr(uri),
        call_id="pairs@127.0.0.1",
        cseq=1,
    )


def _method(machine: Machine) -> str:
    return "INVITE" if machine in (INVITE_CLIENT, INVITE_SERVER) else "OPTIONS"


def _tx(
    machine: Machine, state: State, peer: Endpoint = PEER
) -> tuple[TransactionCore, Transaction]:
    """A transaction of ``machine`` placed in ``state`` with whatever it may need to resend."""
    core = TransactionCore(TimerConfig())
    req = _request(_method(machine))
    key = TransactionKey(machine in CLIENTS, req.top_via.branch or "", "", req.method)
    tx = Transaction(core, machine, key, req, peer)
    if state is not State.INITIAL:
        tx.handle(Input.START, None, None, 0.0)
        if machine in CLIENTS:
            final = make_response(req, 486, to_tag="t")
            tx.handle(Input.FAILURE, final, peer, 0.0)  # leaves an ACK to resend (INVITE)
        else:
            tx.last_response = make_response(req, 180, to_tag="t")
            tx.handle(Input.TU_PROVISIONAL, tx.last_response, None, 0.0)
        tx.state = state
        tx.interval = 0.5
        core.transmits()
        core.events()
    return core, tx


def _message(tx: Transaction, inp: Input) -> tuple[Request | Response | None, Endpoint | None]:
    req = tx.request
    status = {
        Input.PROVISIONAL: 180,
        Input.TU_PROVISIONAL: 180,
        Input.SUCCESS: 200,
        Input.TU_SUCCESS: 200,
        Input.FAILURE: 486,
        Input.TU_FAILURE: 486,
    }.get(inp)
    if status is not None:
        return make_response(req, status, to_tag="t"), (PEER if inp.name[:3] != "TU_" else None)
    if inp is Input.REQUEST:
        return req, PEER
    if inp is Input.ACK:
        ack = _request("ACK")
        return ack, PEER
    return None, None


PAIRS = [(m, s, i) for m in MACHINES for s in State for i in Input]


@pytest.mark.parametrize(
    ("machine", "state", "inp"), PAIRS, ids=[f"{m.name}-{s}-{i}" for m, s, i in PAIRS]
)
def test_every_state_input_pair_follows_the_table(
    machine: Machine, state: State, inp: Input
) -> None:
    core, tx = _tx(machine, state)
    msg, source = _message(tx, inp)
    step = machine.table.get((state, inp))
    if step is not None:
        tx.handle(inp, msg, source, 1.0)
        assert tx.state is step.target
        if step.target is State.TERMINATED:
            assert tx.timers == {}
    elif (state, inp) in machine.ignored:
        tx.handle(inp, msg, source, 1.0)
        assert tx.state is state
        assert core.transmits() == [] and core.events() == []
    else:
        with pytest.raises(ProtocolError) as exc:
            tx.handle(inp, msg, source, 1.0)
        assert tx.state is state  # nothing happened
        assert core.transmits() == [] and core.events() == []
        local = inp in LOCAL_INPUTS
        assert exc.value.side == ("local" if local else "peer")
        assert exc.value.status == (500 if local else 400)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_table_shape(machine: Machine) -> None:
    table = machine.table
    # only START leaves the initial state, nothing leaves Terminated
    assert [k for k in table if k[0] is State.INITIAL] == [(State.INITIAL, Input.START)]
    assert not [k for k in table if k[0] is State.TERMINATED]
    # listed and ignored pairs do not overlap
    assert not set(table) & machine.ignored
    # every state is reachable and can reach Terminated
    reachable = {State.INITIAL}
    frontier = [State.INITIAL]
    while frontier:
        s = frontier.pop()
        for (src, _), step in table.items():
            if src is s and step.target not in reachable:
                reachable.add(step.target)
                frontier.append(step.target)
    assert reachable == set(machine.states)
    for s in machine.states:
        if s is State.TERMINATED:
            continue
        seen: set[State] = {s}
        frontier = [s]
        while frontier:
            cur = frontier.pop()
            for (src, _), step in table.items():
                if src is cur and step.target not in seen:
                    seen.add(step.target)
                    frontier.append(step.target)
        assert State.TERMINATED in seen, s
    # a transport error reported for an endpoint reaches every live transaction: it must never
    # be a protocol error
    for s in machine.states:
        if s not in (State.INITIAL, State.TERMINATED):
            pair = (s, Input.TRANSPORT_ERROR)
            assert pair in table or pair in machine.ignored, pair


def test_timers_belong_to_their_machines() -> None:
    timers = {i for i in Input if i.name.startswith("TIMER_")}
    used = {m.name: {i for (_, i) in m.table if i in timers} for m in MACHINES}
    assert used["INVITE client"] == {Input.TIMER_A, Input.TIMER_B, Input.TIMER_D, Input.TIMER_M}
    assert used["non-INVITE client"] == {Input.TIMER_E, Input.TIMER_F, Input.TIMER_K}
    assert used["INVITE server"] == {
        Input.TIMER_G,
        Input.TIMER_H,
        Input.TIMER_I,
        Input.TIMER_L,
    }
    assert used["non-INVITE server"] == {Input.TIMER_J}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MACHINES),
    st.lists(st.sampled_from(list(Input)), max_size=30),
    st.booleans(),
)
def test_random_input_sequences_follow_the_table(
    machine: Machine, inputs: list[Input], reliable: bool
) -> None:
    peer = Endpoint("tcp" if reliable else "udp", "127.0.0.1", 5080)
    core, tx = _tx(machine, State.INITIAL, peer)
    now = 0.0
    for inp in inputs:
        now += 0.25
        before = tx.state
        msg, source = _message(tx, inp)
        step = machine.table.get((before, inp))
        try:
            tx.handle(inp, msg, source, now)
        except ProtocolError:
            assert step is None and (before, inp) not in machine.ignored
            assert tx.state is before
            continue
        if step is None:
            assert (before, inp) in machine.ignored and tx.state is before
        else:
            assert tx.state is step.target
        # only the timers the table lets fire are ever armed
        for timer in tx.timers:
            assert (tx.state, timer) in machine.table, (tx.state, timer)
        for ev in core.events():
            assert isinstance(
                ev, RequestReceived | ResponseReceived | TransactionTimedOut | TransportFailed
            )
        if reliable:
            assert not {Input.TIMER_A, Input.TIMER_E, Input.TIMER_G} & set(tx.timers)
    # whatever happened, the armed timers alone drive it to an end (or it waits for the TU or
    # a response, which the machine cannot conjure)
    core.handle_timer(now + 1000.0)
    core.handle_timer(now + 2000.0)
    if tx.state is not State.TERMINATED:
        assert tx.state in (State.INITIAL, State.TRYING, State.PROCEEDING)
    assert core.get_timer() is None


def test_retransmission_intervals() -> None:
    core, tx = _tx(INVITE_CLIENT, State.INITIAL)
    tx.handle(Input.START, None, None, 0.0)
    deadlines = []
    while (d := core.get_timer()) is not None:
        deadlines.append(d)
        core.handle_timer(d)
    # A at T1, 2T1, 4T1 ... (fires at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5), B at 64*T1
    assert deadlines == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert len(core.transmits()) == 7  # the INVITE + 6 retransmissions
    assert [type(e) for e in core.events()] == [TransactionTimedOut]

    core, tx = _tx(NON_INVITE_CLIENT, State.INITIAL)
    tx.handle(Input.START, None, None, 0.0)
    deadlines = []
    while (d := core.get_timer()) is not None:
        deadlines.append(d)
        core.handle_timer(d)
    gaps = [b - a for a, b in zip([0.0, *deadlines], deadlines, strict=False)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert deadlines[-1] == 32.0


def test_reliable_zero_timers_fire_at_once() -> None:
    tcp = Endpoint("tcp", "127.0.0.1", 5080)
    core, tx = _tx(NON_INVITE_CLIENT, State.INITIAL, tcp)
    tx.handle(Input.START, None, None, 0.0)
    assert set(tx.timers) == {Input.TIMER_F}  # no E on a stream
    tx.handle(Input.SUCCESS, make_response(tx.request, 200), tcp, 1.0)
    assert core.get_timer() == 1.0  # K = 0
    core.handle_timer(1.0)
    assert tx.state is State.TERMINATED


def test_docs_diagram_is_generated_from_the_tables() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "transactions.md"
    assert doc.read_text(encoding="utf-8") == mermaid(), (
        "regenerate: python -m telephony.sip.txmachines > docs/transactions.md"
    )


def test_diagram_has_one_edge_per_table_entry() -> None:
    text = mermaid()
    assert text.count("```mermaid") == 4
    edges = sum(1 for line in text.splitlines() if " --> " in line and "--> [*]" not in line)
    assert edges == sum(len(m.table) for m in MACHINES)
    assert SERVERS and CLIENTS


def _recorders(
    n: int, core: TransactionCore, fired: list[tuple[float, int, Input]]
) -> list[Transaction]:
    """``n`` real transactions (numbered by their CSeq) of a machine that only records which
    timer fired: a timer leaves the state where it is (no retransmission, no end)."""

    def recording(timer: Input) -> Step:
        def record(tx: Transaction, _msg: object, _src: object, now: float) -> None:
            fired.append((now, tx.request.cseq.seq, timer))

        return Step(State.TRYING, (record,))

    timers = (Input.TIMER_A, Input.TIMER_B, Input.TIMER_K)
    machine = Machine("recorder", {(State.TRYING, t): recording(t) for t in timers}, frozenset())
    txs = []
    for i in range(n):
        req = _request("OPTIONS")
        req.headers.set("CSeq", f"{i} OPTIONS")
        key = TransactionKey(True, req.top_via.branch or "", "", req.method)
        tx = Transaction(core, machine, key, req, PEER)
        tx.state = State.TRYING
        txs.append(tx)
    return txs


_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("arm"),
            st.integers(0, 5),
            st.sampled_from([Input.TIMER_A, Input.TIMER_B, Input.TIMER_K]),
            st.sampled_from([0.0, 0.5, 1.0, 5.0, 32.0]),
        ),
        st.tuples(st.just("stop"), st.integers(0, 5)),
        st.tuples(st.just("tick"), st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 4.5, 6.0, 33.0])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
@example(
    [("tick", 1.0), ("arm", 0, Input.TIMER_B, 5.0), ("tick", -0.5), ("arm", 1, Input.TIMER_B, 5.0)]
)
def test_timers_fire_like_one_ordered_list(ops: list[tuple[object, ...]]) -> None:
    """Against a plain model (every armed timer in one list): the same timers fire, in
    deadline order then the order armed, whatever the clock does (it may go back), stopped or
    re-armed timers never fire, and get_timer() is always the earliest live deadline."""
    fired: list[tuple[float, int, Input]] = []
    core = TransactionCore(TimerConfig())
    txs = _recorders(6, core, fired)
    model: dict[tuple[int, Input], tuple[float, int]] = {}
    expected: list[tuple[float, int, Input]] = []
    now, seq = 0.0, 0
    for op in ops:
        if op[0] == "arm":
            _, i, timer, delay = op
            assert isinstance(i, int) and isinstance(timer, Input) and isinstance(delay, float)
            core._arm(txs[i], timer, delay, now)
            seq += 1
            model[i, timer] = (now + delay, seq)
        elif op[0] == "stop":
            i = op[1]
            assert isinstance(i, int)
            core._disarm_all(txs[i])
            model = {k: v for k, v in model.items() if k[0] != i}
        else:
            t = op[1]
            assert isinstance(t, float)
            now = max(0.0, now + t)  # a negative step is a clock that went back
            due = sorted((v, k) for k, v in model.items() if v[0] <= now)
            expected += [(now, k[0], k[1]) for _, k in due]
            for _, k in due:
                del model[k]
            core.handle_timer(now)
        live = min((v[0] for v in model.values()), default=None)
        assert core.get_timer() == live
        assert fired == expected
