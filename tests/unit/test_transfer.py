"""The cold transfer machine: every (state, input) pair, the chain walk, the timeline."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from telephony.call.transfer import (
    FINAL,
    TABLE,
    TInput,
    Transfer,
    TransferStateError,
    TState,
    mermaid,
)
from telephony.routing.model import Decision, Destination
from telephony.sip.uri import parse_uri

DOCS = Path(__file__).resolve().parents[2] / "docs" / "call-control.md"


def _transfer(n: int = 2) -> Transfer:
    chain = tuple(
        Destination(parse_uri(f"sip:988@127.0.0.1:{5090 + 2 * i}"), name=f"d{i}") for i in range(n)
    )
    decision = Decision(rule="r", source="f.yaml:1", mode="cold", chain=chain)
    return Transfer("t1", "c1", "api", decision, chain)


def _reach(state: TState) -> Transfer:
    t = _transfer()
    path = {
        TState.TRYING: [],
        TState.RINGING: [TInput.RINGING],
        TState.ANSWERED: [TInput.ANSWERED],
        TState.CONFERENCE: [TInput.ANSWERED, TInput.JOIN],
        TState.CONSULTING: [TInput.ANSWERED, TInput.HOLD],
        TState.COMPLETED: [TInput.ANSWERED, TInput.COMPLETE],
        TState.FAILED: [TInput.EXHAUSTED],
        TState.CANCELLED: [TInput.CANCEL],
        TState.ABANDONED: [TInput.CALLER_GONE],
    }[state]
    for inp in path:
        t.step(inp, 0.0)
    assert t.state is state
    return t


@pytest.mark.parametrize(("state", "inp"), list(itertools.product(TState, TInput)))
def test_every_pair_follows_the_table(state: TState, inp: TInput) -> None:
    t = _reach(state)
    expected = TABLE.get((state, inp))
    if expected is None:
        with pytest.raises(TransferStateError) as exc:
            t.step(inp, 1.0)
        assert exc.value.status == 409
        assert t.state is state  # nothing changed
    else:
        assert t.step(inp, 1.0) is expected
        assert t.timeline[-1].event == inp.value


def test_final_states_accept_nothing() -> None:
    for state, _inp in TABLE:
        assert state not in FINAL


def test_chain_walk_and_outcome() -> None:
    t = _transfer(2)
    assert t.destination is not None and t.destination.name == "d0"
    t.step(TInput.RINGING, 1.0, status=180)
    t.step(TInput.ATTEMPT_FAILED, 2.0, status=486)
    assert t.state is TState.TRYING
    assert t.destination is not None and t.destination.name == "d1"
    t.step(TInput.EXHAUSTED, 3.0, status=503)
    assert t.done and t.outcome == "failed" and t.sip_status == 503
    assert [(e.event, e.destination, e.sip_status) for e in t.timeline] == [
        ("ringing", "d0", 180),
        ("attempt failed", "d0", 486),
        ("exhausted", "d1", 503),
    ]


def test_docs_diagram_matches_table() -> None:
    assert mermaid() in DOCS.read_text()
