"""Feature codes keyed on a phone that sends DTMF as SIP INFO (``application/dtmf-relay``, the
mode many desk phones are set to) instead of RFC 4733 telephone-events. Taken only from the
dispatcher's leg, and only when that leg negotiated no telephone-event (a phone sending both
would otherwise have each key counted twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.call.dtmf import parse_dtmf_info
from telephony.call.transfer import TState
from tests.unit.test_b2bua import HANDOFFD, World

NO_EVENTS = (
    b"v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6070 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=sendrecv\r\n"
)


def _key(w: World, peer_name: str, body: str, ctype: str = "application/dtmf-relay") -> int:
    peer = getattr(w, peer_name)
    req = peer.in_dialog("INFO", HANDOFFD, body=body.encode(), content_type=ctype)
    w.net.advance(0.05)
    [final] = [r for r in peer.responses if r.cseq == req.cseq and r.status >= 200]
    return final.status


@pytest.mark.parametrize(
    ("body", "ctype", "key"),
    [
        ("Signal=5\r\nDuration=160\r\n", "application/dtmf-relay", "5"),
        ("Signal= *\r\nDuration=100\r\n", "application/dtmf-relay", "*"),
        ("signal=#\r\n", "application/dtmf-relay", "#"),
        ("Signal=10\r\n", "application/dtmf-relay", "*"),
        ("Signal=11\r\n", "application/dtmf-relay", "#"),
        ("Signal=a\r\n", "application/dtmf-relay", "A"),
        ("8", "application/dtmf", "8"),
        ("Signal=12\r\n", "application/dtmf-relay", None),
        ("Duration=160\r\n", "application/dtmf-relay", None),
        ("Signal=5", "text/plain", None),
        ("Signal=55\r\n", "application/dtmf-relay", None),
    ],
)
def test_parse_dtmf_info(body: str, ctype: str, key: str | None) -> None:
    assert parse_dtmf_info(ctype, body.encode()) == key


def test_info_keys_from_the_dispatcher_start_and_cancel_a_transfer(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.disp1.answer_body = NO_EVENTS  # the phone offers no telephone-event: it sends INFO
    w.primary.answer_after = 5.0  # 988 rings long enough to cancel
    call_id = w.connect()
    call = w.core.calls[call_id]
    assert not w.media.watched  # nothing to watch on the media path
    assert _key(w, "disp1", "Signal=*\r\nDuration=160\r\n") == 200
    assert _key(w, "disp1", "Signal=8\r\nDuration=160\r\n") == 200
    t = call.transfer
    assert t is not None and t.trigger == "dtmf" and t.mode == "warm"
    w.net.advance(0.5)
    assert t.state is TState.RINGING
    assert _key(w, "disp1", "Signal=#\r\n") == 200
    w.net.advance(0.5)
    assert t.state is TState.CANCELLED and w.bridged_to(w.disp1)


def test_info_keys_from_the_caller_or_beside_telephone_events_do_nothing(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.disp1.answer_body = NO_EVENTS
    call_id = w.connect()
    for k in "*8":  # the caller keys a feature code: not the dispatcher, no transfer
        assert _key(w, "caller", f"Signal={k}\r\n") == 200
    assert w.core.calls[call_id].transfer is None
    # a phone that negotiated telephone-event has its keys counted from the media only
    w2 = World(tmp_path / "two")
    call2 = w2.connect()
    for k in "*8":
        assert _key(w2, "disp1", f"Signal={k}\r\n") == 200
    assert w2.core.calls[call2].transfer is None
