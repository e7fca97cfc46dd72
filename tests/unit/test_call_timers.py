"""The call layer's timer heap: order, cancellation, and what a cancelled timer keeps alive."""

from __future__ import annotations

import weakref

from telephony.call.ports import COMPACT_EVERY, Timers


class _Leg:
    """Stands for what a timer callback usually closes over (a leg with sockets)."""


def test_due_timers_fire_in_deadline_order_and_cancelled_ones_do_not() -> None:
    timers = Timers()
    fired: list[str] = []
    timers.at(3.0, lambda now: fired.append(f"c@{now}"))
    timers.at(1.0, lambda now: fired.append(f"a@{now}"))
    b = timers.at(2.0, lambda now: fired.append(f"b@{now}"))
    b.cancel()
    assert timers.get_timer() == 1.0
    timers.handle_timer(2.5)
    assert fired == ["a@2.5"]
    assert timers.get_timer() == 3.0 and len(timers) == 1


def test_a_cancelled_timer_lets_go_of_its_callback_at_once() -> None:
    # A position's ring timer (30 s) is cancelled when the dispatcher answers; the leg it closes
    # over must not stay alive until the 30 s are up.
    timers = Timers()
    leg = _Leg()
    alive = weakref.ref(leg)
    timer = timers.at(30.0, lambda _now, leg=leg: None)  # type: ignore[misc]
    del leg
    assert alive() is not None
    timer.cancel()
    assert alive() is None


def test_the_heap_drops_cancelled_entries_when_they_are_the_majority() -> None:
    timers = Timers()
    for i in range(3 * COMPACT_EVERY):
        timers.at(100.0 + i, lambda _now: None).cancel()
    keep = timers.at(50.0, lambda _now: None)
    assert len(timers._heap) < COMPACT_EVERY
    assert timers.get_timer() == 50.0
    keep.cancel()
    assert timers.get_timer() is None
