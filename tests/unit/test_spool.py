"""The durable spool: append, reopen, replay in order, ack, torn tail, cap, segments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telephony.recording.events import RecordEvent
from telephony.recording.spool import Spool, decode, encode


def ev(n: int, **extra: object) -> RecordEvent:
    return RecordEvent(
        id=f"test-1-{n}",
        kind="transfer_requested",
        at_ms=1_700_000_000_000 + n,
        call_id=f"call-{n % 3}",
        psap="psap-a",
        trunk="cpe",
        transfer_id=f"t-{n % 3}",
        triage_level=2,
        caller_number="+18055550123",
        **extra,  # type: ignore[arg-type]
    )


def ids(events: list[RecordEvent]) -> list[str]:
    return [e.id for e in events]


def test_line_round_trip_keeps_every_field() -> None:
    e = ev(7, location="<pidf>\n34.42 -119.69</pidf>", reason="busy \u00e9")
    line = encode(e)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == e
    assert decode(b'{"kind":"nope","id":"x"}\n') is None
    assert decode(b"{not json\n") is None
    assert (
        decode(b'{"id":"x","kind":"failed","at_ms":"12","call_id":"c","psap":"p","trunk":"t"}')
        is None
    )


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_append_reopen_replay_in_order(tmp_path: Path, policy: str) -> None:
    s = Spool(tmp_path, fsync=policy, max_bytes=1 << 20)
    for n in range(10):
        assert s.append(ev(n))
    assert s.pending() == 10 and s.bytes > 0
    s.flush()
    s.close()
    again = Spool(tmp_path, fsync=policy, max_bytes=1 << 20)
    assert again.pending() == 10
    assert ids(again.read_pending()) == [f"test-1-{n}" for n in range(10)]
    assert ids(list(again)) == ids(again.read_pending())


def test_ack_commits_and_survives_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    for n in range(10):
        s.append(ev(n))
    batch = s.read_pending(4)
    assert ids(batch) == [f"test-1-{n}" for n in range(4)]
    s.ack(3)  # only the first three made it
    assert s.pending() == 7
    assert ids(s.read_pending(2)) == ["test-1-3", "test-1-4"]
    s.close()
    again = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    assert again.pending() == 7
    rest = again.read_pending()
    assert ids(rest) == [f"test-1-{n}" for n in range(3, 10)]
    again.ack(len(rest))
    assert again.pending() == 0 and again.bytes == 0
    assert list(tmp_path.iterdir()) == []  # fully replayed: nothing left on disk
    again.append(ev(11))  # and it goes on
    assert ids(again.read_pending()) == ["test-1-11"]


def test_ack_more_than_read_is_an_error(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="never", max_bytes=1 << 20)
    s.append(ev(1))
    s.read_pending()
    with pytest.raises(ValueError):
        s.ack(2)


def test_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    for n in range(5):
        s.append(ev(n))
    s.close()
    (seg,) = tmp_path.glob("*.log")
    whole = encode(ev(5))
    with seg.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # killed in the middle of a write
    again = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    assert again.torn == 1 and again.pending() == 5
    assert ids(again.read_pending()) == [f"test-1-{n}" for n in range(5)]
    again.append(ev(6))  # appends start on a line boundary again
    assert ids(again.read_pending())[-1] == "test-1-6"
    assert seg.read_bytes().endswith(encode(ev(6)))


def test_a_garbled_line_in_the_middle_is_skipped_not_fatal(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="never", max_bytes=1 << 20)
    s.append(ev(0))
    s.close()
    (seg,) = tmp_path.glob("*.log")
    with seg.open("ab") as f:
        f.write(b"\x00\x00garbage\n")
    s = Spool(tmp_path, fsync="never", max_bytes=1 << 20)
    s.append(ev(1))
    got = s.read_pending()
    assert ids(got) == ["test-1-0", "test-1-1"] and s.corrupt == 1
    s.ack(2)
    assert s.pending() == 0


def test_cap_refuses_and_counts_never_raises(tmp_path: Path) -> None:
    line = len(encode(ev(0)))
    s = Spool(tmp_path, fsync="never", max_bytes=line * 3 + line // 2)
    assert [s.append(ev(n)) for n in range(5)] == [True, True, True, False, False]
    assert s.dropped == 2 and s.pending() == 3
    assert s.bytes <= s.max_bytes
    s.ack(0)
    batch = s.read_pending()
    s.ack(len(batch))
    assert s.append(ev(9))  # room again once replayed


def test_segments_rotate_and_replayed_ones_are_deleted(tmp_path: Path) -> None:
    line = len(encode(ev(0)))
    s = Spool(tmp_path, fsync="batch", max_bytes=1 << 20, segment_bytes=line * 4)
    for n in range(10):
        s.append(ev(n))
    assert len(list(tmp_path.glob("*.log"))) == 3
    s.read_pending(5)
    s.ack(5)
    assert len(list(tmp_path.glob("*.log"))) == 2  # the first segment went away
    assert len(list(tmp_path.glob("*.ack"))) == 1  # the second is half done
    s.close()
    again = Spool(tmp_path, fsync="batch", max_bytes=1 << 20, segment_bytes=line * 4)
    assert ids(again.read_pending()) == [f"test-1-{n}" for n in range(5, 10)]


def test_push_front_goes_before_what_is_pending(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    for n in (3, 4):
        s.append(ev(n))
    assert s.push_front([ev(1), ev(2)]) == 2
    s.append(ev(5))
    assert ids(s.read_pending()) == [f"test-1-{n}" for n in range(1, 6)]
    s.close()
    again = Spool(tmp_path, fsync="always", max_bytes=1 << 20)
    got = again.read_pending()
    assert ids(got) == [f"test-1-{n}" for n in range(1, 6)]
    again.ack(len(got))
    assert again.pending() == 0 and list(tmp_path.iterdir()) == []


def test_batch_policy_asks_for_fsync_after_the_interval(tmp_path: Path) -> None:
    s = Spool(tmp_path, fsync="batch", max_bytes=1 << 20)
    s._last_sync -= 1.0  # as if the last fsync was a second ago
    s._dirty = False
    assert not s.sync_due()
    s.append(ev(0))  # due: fsynced right away by the append itself
    assert not s.sync_due()
    s.append(ev(1))  # within the interval: left for later
    fd = s.dup_for_sync()
    assert fd is not None
    os.fsync(fd)
    os.close(fd)
    assert s.dup_for_sync() is None
