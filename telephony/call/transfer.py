"""The transfer state machine (cold, warm, consult): one table, a timeline, no I/O.

A :class:`Transfer` walks a destination chain. The controller (``telephony.call.b2bua``) feeds
it what happened on the 988 leg and acts on the state it lands in; the machine itself only
decides the next state, counts the chain and keeps the timeline the API and the records show.

Every trigger (an INVITE to the transfer number, a REFER from the dispatcher, the HTTP hook)
uses the same machine; only what the controller does on ``answered`` and ``failed`` differs.
A cold transfer goes ``answered -> completed`` at once. A warm one joins the answered counselor
to caller and dispatcher (``conference``); a consult one holds the caller while dispatcher and
counselor talk (``consulting``); both then complete (the dispatcher leaves), or are cancelled or
lose the counselor (the caller stays with the dispatcher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from telephony.routing.model import Decision, Destination, Mode
from telephony.sip.errors import SipError

Trigger = Literal["invite", "refer", "api", "dtmf", "attended"]


class TState(Enum):
    TRYING = "trying"  # INVITE out to the current destination, nothing beyond 100 yet
    RINGING = "ringing"  # the current destination sent 180/183
    ANSWERED = "answered"  # a destination answered; the caller is being bridged to it
    CONFERENCE = "conference"  # warm: caller, dispatcher and counselor hear each other
    CONSULTING = "consulting"  # consult: caller held, dispatcher and counselor talk
    COMPLETED = "completed"  # caller and destination bridged, dispatcher released
    FAILED = "failed"  # every destination failed; the caller went back (or stayed) with the PSAP
    CANCELLED = "cancelled"  # the dispatcher (API) called it off before an answer
    ABANDONED = "abandoned"  # the caller hung up before the transfer completed


class TInput(Enum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ATTEMPT_FAILED = "attempt failed"  # this destination failed and another one is left
    EXHAUSTED = "exhausted"  # this destination failed and none is left
    JOIN = "joined"  # warm: the counselor is mixed in with caller and dispatcher
    HOLD = "consult"  # consult: the caller is held, dispatcher and counselor bridged
    MIX = "conference"  # consult -> all three mixed
    COMPLETE = "complete"
    CANCEL = "cancel"
    CALLER_GONE = "caller gone"
    DESTINATION_GONE = "destination left"  # the counselor hung up before completion


S, In = TState, TInput
TABLE: dict[tuple[TState, TInput], TState] = {
    (S.TRYING, In.RINGING): S.RINGING,
    (S.RINGING, In.RINGING): S.RINGING,
    (S.TRYING, In.ANSWERED): S.ANSWERED,
    (S.RINGING, In.ANSWERED): S.ANSWERED,
    (S.TRYING, In.ATTEMPT_FAILED): S.TRYING,
    (S.RINGING, In.ATTEMPT_FAILED): S.TRYING,
    (S.TRYING, In.EXHAUSTED): S.FAILED,
    (S.RINGING, In.EXHAUSTED): S.FAILED,
    (S.ANSWERED, In.COMPLETE): S.COMPLETED,
    (S.ANSWERED, In.JOIN): S.CONFERENCE,
    (S.ANSWERED, In.HOLD): S.CONSULTING,
    (S.CONSULTING, In.MIX): S.CONFERENCE,
    (S.CONFERENCE, In.COMPLETE): S.COMPLETED,
    (S.CONSULTING, In.COMPLETE): S.COMPLETED,
    (S.CONFERENCE, In.CANCEL): S.CANCELLED,
    (S.CONSULTING, In.CANCEL): S.CANCELLED,
    (S.CONFERENCE, In.DESTINATION_GONE): S.FAILED,
    (S.CONSULTING, In.DESTINATION_GONE): S.FAILED,
    (S.CONFERENCE, In.CALLER_GONE): S.ABANDONED,
    (S.CONSULTING, In.CALLER_GONE): S.ABANDONED,
    (S.TRYING, In.CANCEL): S.CANCELLED,
    (S.RINGING, In.CANCEL): S.CANCELLED,
    (S.TRYING, In.CALLER_GONE): S.ABANDONED,
    (S.RINGING, In.CALLER_GONE): S.ABANDONED,
    (S.ANSWERED, In.CALLER_GONE): S.ABANDONED,
}
FINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.ABANDONED})


class TransferStateError(SipError):
    """An input the table does not allow in the current state (409 to the API)."""

    def __init__(self, state: TState, inp: TInput) -> None:
        super().__init__(f"transfer is {state.value}: cannot {inp.value}", 409, "local")
        self.state = state


def mermaid() -> str:
    """The table as a Mermaid state diagram (docs/call-control.md is generated from it)."""
    lines = ["stateDiagram-v2", "    [*] --> trying"]
    for (src, inp), dst in TABLE.items():
        lines.append(f"    {src.value} --> {dst.value}: {inp.value}")
    lines.extend(f"    {s.value} --> [*]" for s in TState if s in FINAL)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One thing that happened to a transfer; ``at`` is wall-clock seconds (Unix time)."""

    event: str
    at: float
    destination: str | None = None
    sip_status: int | None = None


@dataclass(slots=True)
class Transfer:
    """One transfer of one call along ``chain`` (the rule's chain, then any fallback chain).

    ``index`` is the destination being tried; ``skipped`` counts destinations passed over
    because the prober had them down. ``outcome`` and ``sip_status`` are set when it ends.
    """

    id: str
    call_id: str
    trigger: Trigger
    decision: Decision
    chain: tuple[Destination, ...]
    triage_level: int | None = None
    reason: str | None = None
    mode: Mode = "cold"  # the mode this transfer runs in (the rule's is only a default)
    state: TState = TState.TRYING
    index: int = 0
    outcome: str | None = None
    sip_status: int | None = None
    timeline: list[TimelineEntry] = field(default_factory=list)

    @property
    def destination(self) -> Destination | None:
        return self.chain[self.index] if self.index < len(self.chain) else None

    @property
    def done(self) -> bool:
        return self.state in FINAL

    def can(self, inp: TInput) -> bool:
        return (self.state, inp) in TABLE

    def step(self, inp: TInput, wall: float, *, status: int | None = None) -> TState:
        """Apply ``inp``; raises :class:`TransferStateError` when the table has no entry."""
        nxt = TABLE.get((self.state, inp))
        if nxt is None:
            raise TransferStateError(self.state, inp)
        dest = self.destination
        self.timeline.append(TimelineEntry(inp.value, wall, dest.label if dest else None, status))
        if inp is TInput.ATTEMPT_FAILED:
            self.index += 1
        self.state = nxt
        if nxt in FINAL:
            self.outcome = nxt.value
            self.sip_status = status
        return nxt

    def skip(self, event: str, wall: float) -> None:
        """Pass over the current destination without trying it (the prober has it down)."""
        self.note(event, wall)
        self.index += 1

    def note(self, event: str, wall: float, *, status: int | None = None) -> None:
        """Add a timeline entry that does not change the state (e.g. ``trying``)."""
        dest = self.destination
        self.timeline.append(TimelineEntry(event, wall, dest.label if dest else None, status))
