"""Bindings kept across a restart: the stored form (``telephony/registrations.py``) and what
``Registrar.restore`` takes back. Redis itself is in tests/e2e/test_registrar.py (a real
redis-server, two handoffd in turn)."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from telephony.call.registrar import Reach
from telephony.registrations import decode, from_json, to_json
from telephony.sip.transaction import Endpoint
from tests.unit.test_registrar import CONFIG, NOW, PHONE, machine, signed

#: the stored form's wall clock runs this far ahead of the registrar's (any offset)
OFFSET = 1_700_000_000.0


def _kept(reg: object, position: str = "disp-3") -> list[object]:
    """What a restarted registrar reads back: the bindings through JSON, as Redis holds them."""
    text = json.dumps([to_json(b, OFFSET) for b in reg.live(position)])  # type: ignore[attr-defined]
    return [from_json(position, item, OFFSET) for item in json.loads(text)]


def test_a_binding_survives_the_round_trip_and_is_taken_back() -> None:
    old = machine()
    assert signed(old, expires="600", contacts=("<sip:disp-3@10.0.0.7:5080>;q=0.5",)).status == 200
    kept = _kept(old)
    new = machine()
    later = NOW + 100
    assert new.restore(kept, later) == 1  # type: ignore[arg-type]
    [b] = new.bindings("disp-3")
    assert (b.contact, b.source, b.q, b.state) == (
        "sip:disp-3@10.0.0.7:5080",
        PHONE,
        0.5,
        Reach.REACHABLE,
    )
    assert abs(b.expires_at - (NOW + 600)) < 0.002  # the same moment, to the millisecond
    assert new.target("disp-3", later) is not None
    # qualified within a second of the restart, not after a whole interval
    assert new.get_timer() is not None and new.get_timer() <= later + 1.0  # type: ignore[operator]


def test_expired_unknown_rebound_and_surplus_bindings_are_not_taken() -> None:
    old = machine()
    assert signed(old, expires="600").status == 200
    kept = _kept(old)
    new = machine()
    assert new.restore(kept, NOW + 600) == 0  # type: ignore[arg-type]  # expired meanwhile
    # registered again since the restart: the fresh binding stays, the stored one is not added
    assert signed(new, now=NOW + 10, expires="300").status == 200
    assert new.restore(_kept(old), NOW + 20) == 0  # type: ignore[arg-type]
    [b] = new.bindings("disp-3")
    assert b.expires_at == NOW + 10 + 300
    # a position no longer configured with credentials
    foreign = [from_json("disp-1", to_json(b, OFFSET), OFFSET) for b in old.live("disp-3")]
    assert machine().restore(foreign, NOW) == 0
    # no more than max_contacts
    many = machine()
    contacts = tuple(f"<sip:disp-3@127.0.0.1:{6000 + i}>" for i in range(CONFIG.max_contacts))
    assert signed(many, contacts=contacts).status == 200
    extra = machine()
    assert signed(extra, contacts=("<sip:disp-3@127.0.0.1:7000>",)).status == 200
    assert many.restore(_kept(extra), NOW + 1) == 0  # type: ignore[arg-type]
    assert len(many.bindings("disp-3")) == CONFIG.max_contacts


def test_the_stored_form_holds_no_secret_and_names_the_register_source() -> None:
    reg = machine()
    assert signed(reg).status == 200
    [item] = [to_json(b, OFFSET) for b in reg.live("disp-3")]
    assert set(item) == {"contact", "source", "call_id", "cseq", "q", "expires_ms"}
    assert item["source"] == ["udp", "127.0.0.1", 5080]
    assert "pw3" not in json.dumps(item)
    assert from_json("disp-3", item, OFFSET).source == Endpoint("udp", "127.0.0.1", 5080)


_VALUE = st.one_of(
    st.text(max_size=40),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.none(),
    st.lists(st.one_of(st.text(max_size=12), st.integers(0, 70000)), max_size=4),
)
#: every field present, any value: the closest a damaged key comes to a real one
_WHOLE = st.lists(
    st.fixed_dictionaries(
        {k: _VALUE for k in ("contact", "source", "call_id", "cseq", "q", "expires_ms")}
    ),
    max_size=3,
).map(json.dumps)


@settings(max_examples=300, deadline=None)
@example(
    json.dumps(
        [
            {
                "contact": "<sip:no-close",
                "source": ["udp", "h", 1],
                "call_id": "c",
                "cseq": 1,
                "q": 1,
                "expires_ms": 1,
            }
        ]
    )
)
@given(
    st.one_of(
        _WHOLE,
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["contact", "source", "call_id", "cseq", "q", "expires_ms"])
                    | st.text(max_size=8),
                    inner,
                    max_size=7,
                )
            ),
            max_leaves=20,
        ).map(json.dumps),
    )
)
def test_whatever_is_stored_decodes_or_is_refused_with_value_error(raw: str) -> None:
    """A key damaged by hand, an older format, anything: bindings or ValueError, nothing that
    would stop the store's task (it restores what it can and logs the rest)."""
    try:
        kept = decode("disp-3", raw, OFFSET)
    except ValueError:
        return
    assert all(b.position == "disp-3" for b in kept)
    machine().restore(kept, NOW)  # and whatever decoded can be offered to the registrar
