"""The registrar for dispatcher positions, in memory: the machine alone, then inside the controller.

First :class:`Registrar` with hand-built REGISTERs and a fake clock: digest challenge and
verification (401, 403 for a wrong password and for an unknown user alike, stale nonces, replays),
the RFC 3261 §10.3 rules (address-of-record, ``*``, Expires / ``;expires=`` against min/max, 423 +
Min-Expires, Call-ID/CSeq ordering, atomic changes, query), expiry and qualify on the clock, and
the reachability table. Then the controller on the in-memory network of tests/unit/callnet.py: a
phone registers with a Contact nothing listens on (as behind NAT) and the 911 call still reaches it
at the REGISTER's source; unregistered and unreachable positions fall back to their ``uri``, are
passed over by the recall, or get the caller a 480. Last, the config keys.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.call.b2bua import B2bua
from telephony.call.registrar import (
    TABLE,
    BindingStateError,
    ContactReachable,
    ContactRefreshed,
    ContactRegistered,
    ContactRemoved,
    ContactUnreachable,
    QualifyDue,
    Reach,
    ReachInput,
    RegisterRejected,
    RegisterReply,
    Registrar,
    mermaid,
)
from telephony.call.transfer import TState
from telephony.config import (
    AUTH_KEYS,
    REGISTRAR_KEYS,
    Config,
    ConfigError,
    Position,
    PositionAuth,
    RegistrarConfig,
    load_config,
)
from telephony.routing import load_rules
from telephony.sip.auth import DigestClient, choose_challenge, parse_challenge
from telephony.sip.headers import NameAddr, Via, new_branch, new_tag
from telephony.sip.message import Request, Response, make_request, make_response
from telephony.sip.transaction import Endpoint, Event, ResponseReceived
from telephony.sip.uri import parse_uri
from tests.e2e.harness import Ports, write_setup
from tests.unit.callnet import FakeMedia, LayerPort, Net, Node, Peer, sdp

ROOT = Path(__file__).resolve().parents[2]
NOW = 1000.0
PHONE = Endpoint("udp", "127.0.0.1", 5080)
REG_URI = "sip:127.0.0.1:5060"
SECRET = b"registrar-test-secret-0123456789"
CONFIG = RegistrarConfig(
    min_expires=60, max_expires=3600, default_expires=600, qualify_interval=30, qualify_timeout=5
)
POSITIONS = {
    "disp-1": Position("disp-1", parse_uri("sip:disp1@127.0.0.1:5070")),
    "disp-3": Position("disp-3", None, auth=PositionAuth("disp-3", "pw3")),
    "disp-4": Position(
        "disp-4", parse_uri("sip:disp4@127.0.0.1:5074"), auth=PositionAuth("d4", "pw4")
    ),
}


def machine(config: RegistrarConfig = CONFIG) -> Registrar:
    return Registrar(config, POSITIONS, secret=SECRET)


def request(
    *,
    aor: str = "disp-3",
    contacts: tuple[str, ...] = ("<sip:disp-3@127.0.0.1:5080>",),
    expires: str | None = None,
    call_id: str = "reg-1",
    cseq: int = 1,
    headers: tuple[tuple[str, str], ...] = (),
    to_tag: str | None = None,
    via_port: int = 5080,
) -> Request:
    to = NameAddr(parse_uri(f"sip:{aor}@127.0.0.1"))
    extra = [("Contact", c) for c in contacts]
    if expires is not None:
        extra.append(("Expires", expires))
    return make_request(
        "REGISTER",
        parse_uri(REG_URI),
        via=Via("UDP", "127.0.0.1", via_port, (("branch", new_branch()),)),
        from_=NameAddr(to.uri, None, (("tag", new_tag()),)),
        to=to if to_tag is None else to.with_tag(to_tag),
        call_id=call_id,
        cseq=cseq,
        headers=(*extra, *headers),
    )


def signed(
    reg: Registrar,
    *,
    user: str = "disp-3",
    password: str = "pw3",
    now: float = NOW,
    aor: str = "disp-3",
    contacts: tuple[str, ...] = ("<sip:disp-3@127.0.0.1:5080>",),
    expires: str | None = None,
    call_id: str = "reg-1",
    cseq: int = 1,
) -> RegisterReply:
    """The phone's two steps: REGISTER, 401, REGISTER with credentials (CSeq + 1)."""
    kw = {"aor": aor, "contacts": contacts, "expires": expires, "call_id": call_id}
    first = reg.register(request(cseq=cseq, **kw), PHONE, now)  # type: ignore[arg-type]
    assert first.status == 401
    challenge = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    value = DigestClient(user, password).authorization(
        challenge, method="REGISTER", uri=REG_URI, cnonce="0a4f113b"
    )
    auth = (("Authorization", value),)
    return reg.register(request(cseq=cseq + 1, headers=auth, **kw), PHONE, now)  # type: ignore[arg-type]


def changed(reg: Registrar) -> list[object]:
    """The events that changed a binding (not the 401s every registration starts with)."""
    return [e for e in reg.events() if not isinstance(e, RegisterRejected)]


def contacts(reply: RegisterReply) -> list[str]:
    return [v for n, v in reply.headers if n == "Contact"]


# ------------------------------------------------------------------------------ authentication


def test_unauthenticated_register_is_challenged_sha256_first_then_md5() -> None:
    reg = machine()
    reply = reg.register(request(), PHONE, NOW)
    assert reply.status == 401
    challenges = [parse_challenge(v) for n, v in reply.headers if n == "WWW-Authenticate"]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]  # RFC 8760 §2.3 order
    assert all(c.realm == "handoffd" and c.qop == ("auth",) for c in challenges)
    assert reg.bindings("disp-3") == []


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_right_password_registers_and_the_200_lists_the_binding(algorithm: str) -> None:
    reg = machine()
    first = reg.register(request(), PHONE, NOW)
    values = [v for n, v in first.headers if n == "WWW-Authenticate" and algorithm in v]
    challenge = parse_challenge(values[0])
    value = DigestClient("disp-3", "pw3").authorization(
        challenge, method="REGISTER", uri=REG_URI, cnonce="c1"
    )
    reply = reg.register(request(cseq=2, headers=(("Authorization", value),)), PHONE, NOW)
    assert reply.status == 200
    assert contacts(reply) == ["<sip:disp-3@127.0.0.1:5080>;expires=600"]
    [b] = reg.bindings("disp-3")
    assert (b.contact, b.source, b.expires_at, b.state) == (
        "sip:disp-3@127.0.0.1:5080",
        PHONE,
        NOW + 600,
        Reach.REACHABLE,
    )
    assert any(isinstance(e, ContactRegistered) and e.expires == 600 for e in reg.events())


def test_wrong_password_and_unknown_user_get_the_same_403_and_no_binding() -> None:
    reg = machine()
    wrong = signed(reg, password="nope")
    unknown = signed(reg, user="intruder", password="pw3")
    assert wrong == RegisterReply(403) and unknown == RegisterReply(403)
    assert reg.bindings("disp-3") == []
    details = [
        e.detail for e in reg.events() if isinstance(e, RegisterRejected) and e.status == 403
    ]
    assert details == ["bad response", "unknown user"]  # only the logs tell them apart


def test_a_position_without_auth_cannot_register() -> None:
    reg = machine()
    assert signed(reg, user="disp-1", password="", aor="disp-1").status == 403
    assert reg.bindings("disp-1") == []


def test_an_old_nonce_is_answered_stale_and_a_replay_is_refused() -> None:
    reg = machine()
    first = reg.register(request(), PHONE, NOW)
    challenge = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    value = DigestClient("disp-3", "pw3").authorization(
        challenge, method="REGISTER", uri=REG_URI, cnonce="c1"
    )
    late = reg.register(request(cseq=2, headers=(("Authorization", value),)), PHONE, NOW + 301)
    assert late.status == 401
    assert all(parse_challenge(v).stale for n, v in late.headers if n == "WWW-Authenticate")
    ok = reg.register(request(cseq=3, headers=(("Authorization", value),)), PHONE, NOW + 1)
    assert ok.status == 200
    replay = reg.register(request(cseq=4, headers=(("Authorization", value),)), PHONE, NOW + 2)
    assert replay.status == 403  # same nonce, same nc


def test_credentials_for_another_request_uri_are_refused() -> None:
    reg = machine()
    first = reg.register(request(), PHONE, NOW)
    challenge = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    value = DigestClient("disp-3", "pw3").authorization(
        challenge, method="REGISTER", uri="sip:elsewhere.example", cnonce="c1"
    )
    reply = reg.register(request(cseq=2, headers=(("Authorization", value),)), PHONE, NOW)
    assert reply.status == 400
    assert reg.bindings("disp-3") == []


def test_credentials_for_the_request_uri_with_other_parameters_are_accepted() -> None:
    reg = machine()
    first = reg.register(request(), PHONE, NOW)
    challenge = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    value = DigestClient("disp-3", "pw3").authorization(
        challenge, method="REGISTER", uri=f"{REG_URI};transport=UDP", cnonce="c1"
    )  # what pyVoIP 1.6 does (docs/decisions/0003-pyvoip.md)
    reply = reg.register(request(cseq=2, headers=(("Authorization", value),)), PHONE, NOW)
    assert reply.status == 200


@pytest.mark.parametrize("require_qop", [True, False])
def test_digest_without_qop_only_when_allowed(require_qop: bool) -> None:
    reg = machine(RegistrarConfig(require_qop=require_qop))
    first = reg.register(request(), PHONE, NOW)
    offered = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    old_style = dataclasses.replace(offered, qop=())  # how pyVoIP 1.6 answers (RFC 2069)
    value = DigestClient("disp-3", "pw3").authorization(
        old_style, method="REGISTER", uri=REG_URI, cnonce="c1"
    )
    assert "qop" not in value and "nc=" not in value
    reply = reg.register(request(cseq=2, headers=(("Authorization", value),)), PHONE, NOW)
    assert reply.status == (403 if require_qop else 200)


def test_malformed_credentials_are_400() -> None:
    reg = machine()
    bad = request(headers=(("Authorization", "Digest username=disp-3, realm"),))
    assert reg.register(bad, PHONE, NOW).status == 400


# ------------------------------------------------------------------------------ §10.3 rules


def test_address_of_record_of_another_position_is_403_and_unknown_is_404() -> None:
    reg = machine()
    assert signed(reg, aor="disp-4").status == 403
    assert signed(reg, aor="disp-1").status == 403  # a position, but not this user's
    assert signed(reg, aor="nobody").status == 404
    assert reg.bindings("disp-3") == reg.bindings("disp-4") == []


def test_the_username_is_an_address_of_record_too() -> None:
    reg = machine()
    reply = signed(reg, user="d4", password="pw4", aor="d4", contacts=("<sip:d4@127.0.0.1:5080>",))
    assert reply.status == 200
    assert [b.contact for b in reg.bindings("disp-4")] == ["sip:d4@127.0.0.1:5080"]


def test_expires_header_contact_param_and_the_maximum() -> None:
    reg = machine()
    reply = signed(
        reg,
        expires="120",
        contacts=(
            "<sip:disp-3@127.0.0.1:5080>",
            "<sip:disp-3@127.0.0.1:5082>;expires=7200",
            "<sip:disp-3@127.0.0.1:5084>;expires=99999999999",
        ),
    )
    assert reply.status == 200
    assert contacts(reply) == [
        "<sip:disp-3@127.0.0.1:5080>;expires=120",
        "<sip:disp-3@127.0.0.1:5082>;expires=3600",
        "<sip:disp-3@127.0.0.1:5084>;expires=3600",  # beyond 2**32-1, then capped at the max
    ]


def test_too_brief_is_423_with_min_expires_and_changes_nothing() -> None:
    reg = machine()
    assert signed(reg).status == 200
    reply = signed(
        reg,
        call_id="reg-2",
        contacts=("<sip:disp-3@127.0.0.1:5082>", "<sip:disp-3@127.0.0.1:5080>;expires=30"),
    )
    assert reply == RegisterReply(423, (("Min-Expires", "60"),))
    [b] = reg.bindings("disp-3")  # the first contact of the refused request was not added
    assert b.contact == "sip:disp-3@127.0.0.1:5080" and b.expires_at == NOW + 600


def test_expires_zero_removes_one_contact_and_star_removes_all() -> None:
    reg = machine()
    many = ("<sip:disp-3@127.0.0.1:5080>", "<sip:disp-3@127.0.0.1:5082>")
    assert signed(reg, contacts=many).status == 200
    one = signed(reg, cseq=3, contacts=("<sip:disp-3@127.0.0.1:5082>;expires=0",))
    assert contacts(one) == ["<sip:disp-3@127.0.0.1:5080>;expires=600"]
    reg.events()
    star = signed(reg, cseq=5, contacts=("*",), expires="0")
    assert star.status == 200 and contacts(star) == []
    assert reg.bindings("disp-3") == []
    assert [type(e) for e in changed(reg)] == [ContactRemoved]


@pytest.mark.parametrize(
    ("contact_values", "expires"),
    [
        (("*",), None),  # '*' needs Expires: 0
        (("*",), "60"),
        (("*", "<sip:disp-3@127.0.0.1:5080>"), "0"),  # '*' must be alone
        (("*, <sip:disp-3@127.0.0.1:5080>",), "0"),
    ],
)
def test_star_misuse_is_400(contact_values: tuple[str, ...], expires: str | None) -> None:
    reg = machine()
    assert signed(reg).status == 200
    assert signed(reg, cseq=3, contacts=contact_values, expires=expires).status == 400
    assert len(reg.bindings("disp-3")) == 1


@pytest.mark.parametrize(
    "bad",
    [
        "<sip:disp-3@127.0.0.1:5080",  # no '>'
        "<sip:disp-3@[::1:5080>",  # bad host
        "<tel:+15551234567>",  # not a sip: URI: it could not be called
        "<sips:disp-3@127.0.0.1:5081>",  # no TLS
        "<sip:disp-3@127.0.0.1:5080>;expires=soon",
        "<sip:disp-3@127.0.0.1:5080>;q=2",
    ],
)
def test_malformed_contact_is_400_and_binds_nothing(bad: str) -> None:
    reg = machine()
    reply = signed(reg, contacts=(bad,))
    assert reply.status == 400
    assert [n for n, _ in reply.headers] == ["Warning"]  # says what is wrong
    assert reg.bindings("disp-3") == []


def test_bad_expires_header_is_400() -> None:
    reg = machine()
    assert signed(reg, expires="-5").status == 400


def test_a_required_extension_is_420_with_unsupported() -> None:
    reg = machine()
    reply = reg.register(request(headers=(("Require", "path, gruu"),)), PHONE, NOW)
    assert reply == RegisterReply(420, (("Unsupported", "path, gruu"),))


def test_a_query_lists_the_bindings_and_changes_nothing() -> None:
    reg = machine()
    assert signed(reg).status == 200
    reg.events()
    query = signed(reg, cseq=3, contacts=(), now=NOW + 100)
    assert contacts(query) == ["<sip:disp-3@127.0.0.1:5080>;expires=500"]
    assert changed(reg) == []


def test_cseq_ordering_per_call_id() -> None:
    reg = machine()
    assert signed(reg, cseq=10).status == 200  # CSeq 10 then 11
    stale = signed(reg, cseq=5, expires="0")  # same Call-ID, CSeq 5/6: out of order
    assert stale.status == 400
    assert len(reg.bindings("disp-3")) == 1
    other = signed(reg, cseq=1, call_id="reboot", expires="300")  # a new Call-ID may go lower
    assert contacts(other) == ["<sip:disp-3@127.0.0.1:5080>;expires=300"]
    assert any(isinstance(e, ContactRefreshed) for e in reg.events())


def test_a_refresh_from_a_new_source_moves_the_binding() -> None:
    reg = machine()
    signed(reg)
    moved = Endpoint("udp", "127.0.0.1", 6000)
    first = reg.register(request(cseq=3), moved, NOW + 10)
    challenge = choose_challenge(v for n, v in first.headers if n == "WWW-Authenticate")
    value = DigestClient("disp-3", "pw3").authorization(
        challenge, method="REGISTER", uri=REG_URI, cnonce="c9"
    )
    reply = reg.register(request(cseq=4, headers=(("Authorization", value),)), moved, NOW + 10)
    assert reply.status == 200
    assert reg.target("disp-3", NOW + 10) == (parse_uri("sip:disp-3@127.0.0.1:5080"), moved)


def test_beyond_max_contacts_the_oldest_is_replaced() -> None:
    reg = machine(RegistrarConfig(max_contacts=2, qualify_interval=0))
    for i, port in enumerate((5080, 5082, 5084)):
        c = (f"<sip:disp-3@127.0.0.1:{port}>",)
        signed(reg, call_id=f"boot-{i}", contacts=c, now=NOW + i)
    assert [b.contact for b in reg.bindings("disp-3")] == [
        "sip:disp-3@127.0.0.1:5082",
        "sip:disp-3@127.0.0.1:5084",
    ]
    removed = [e for e in reg.events() if isinstance(e, ContactRemoved)]
    assert removed == [ContactRemoved("disp-3", "sip:disp-3@127.0.0.1:5080", "replaced")]


def test_target_prefers_q_then_the_newest() -> None:
    reg = machine()
    signed(
        reg,
        contacts=("<sip:disp-3@127.0.0.1:5080>;q=0.5", "<sip:disp-3@127.0.0.1:5082>;q=0.9"),
    )
    assert reg.target("disp-3", NOW)[0].port == 5082  # type: ignore[index]
    signed(reg, call_id="b", contacts=("<sip:disp-3@127.0.0.1:5084>;q=0.9",), now=NOW + 5)
    assert reg.target("disp-3", NOW + 5)[0].port == 5084  # type: ignore[index]
    assert reg.target("disp-4", NOW) is None


# ------------------------------------------------------------------------------ the clock


def test_expiry_is_timer_driven() -> None:
    reg = machine(RegistrarConfig(min_expires=1, qualify_interval=0))
    signed(reg, expires="10")
    reg.events()
    assert reg.get_timer() == NOW + 10
    reg.handle_timer(NOW + 9.9)
    assert len(reg.bindings("disp-3")) == 1
    reg.handle_timer(NOW + 10)
    assert reg.bindings("disp-3") == [] and reg.get_timer() is None
    assert reg.events() == [ContactRemoved("disp-3", "sip:disp-3@127.0.0.1:5080", "expired")]
    assert reg.target("disp-3", NOW + 10) is None


def test_an_expired_binding_is_not_a_target_even_before_its_timer_runs() -> None:
    reg = machine(RegistrarConfig(min_expires=1, qualify_interval=0))
    signed(reg, expires="10")
    assert reg.target("disp-3", NOW + 11) is None


def test_qualify_marks_a_silent_contact_unreachable_and_an_answer_brings_it_back() -> None:
    reg = machine()
    signed(reg, expires="3600")
    reg.events()
    assert reg.get_timer() == NOW + 30
    reg.handle_timer(NOW + 30)
    [due] = reg.events()
    assert isinstance(due, QualifyDue)
    assert (due.uri, due.dest) == (parse_uri("sip:disp-3@127.0.0.1:5080"), PHONE)
    assert reg.get_timer() == NOW + 35  # the answer's deadline
    reg.handle_timer(NOW + 35)
    assert reg.events() == [ContactUnreachable("disp-3", "sip:disp-3@127.0.0.1:5080")]
    assert reg.target("disp-3", NOW + 35) is None
    reg.handle_timer(NOW + 60)
    [due2] = reg.events()
    assert isinstance(due2, QualifyDue)
    reg.qualify_result(due.binding, due.seq, 200)  # a late answer to the first: ignored
    assert reg.events() == []
    reg.qualify_result(due2.binding, due2.seq, 200)
    assert reg.events() == [ContactReachable("disp-3", "sip:disp-3@127.0.0.1:5080")]
    assert reg.target("disp-3", NOW + 61) is not None


@pytest.mark.parametrize(
    ("status", "reachable"), [(200, True), (405, True), (408, False), (503, False)]
)
def test_qualify_statuses(status: int, reachable: bool) -> None:
    reg = machine()
    signed(reg, expires="3600")
    reg.handle_timer(NOW + 30)
    due = next(e for e in reg.events() if isinstance(e, QualifyDue))
    reg.qualify_result(due.binding, due.seq, status)
    [b] = reg.bindings("disp-3")
    assert (b.state is Reach.REACHABLE) is reachable


def test_registering_again_makes_an_unreachable_contact_reachable() -> None:
    reg = machine()
    signed(reg, expires="3600")
    reg.handle_timer(NOW + 30)
    reg.handle_timer(NOW + 35)
    assert reg.bindings("disp-3")[0].state is Reach.UNREACHABLE
    reg.events()
    signed(reg, cseq=3, now=NOW + 40)
    assert ContactReachable("disp-3", "sip:disp-3@127.0.0.1:5080") in reg.events()
    assert reg.bindings("disp-3")[0].state is Reach.REACHABLE


# ------------------------------------------------------------------------------ the table


@pytest.mark.parametrize("state", list(Reach))
@pytest.mark.parametrize("inp", list(ReachInput))
def test_every_state_input_pair_is_listed_or_an_error(state: Reach, inp: ReachInput) -> None:
    reg = machine()
    signed(reg)
    binding = next(iter(reg._bindings.values()))
    binding.state = state
    if (state, inp) in TABLE:
        reg._step(binding, inp)
        assert binding.state is TABLE[state, inp]
    else:
        assert state is Reach.REMOVED  # nothing happens to a binding once it is gone
        with pytest.raises(BindingStateError) as err:
            reg._step(binding, inp)
        assert err.value.status == 500 and err.value.side == "local"


def test_docs_diagram_is_generated_from_the_table() -> None:
    doc = (ROOT / "docs" / "registrar.md").read_text()
    assert "```mermaid\n" + mermaid() + "```" in doc


# ------------------------------------------------------------------------------ in the controller

PORTS = Ports(sip=5060, http=8080, disp1=5070, disp2=5072, primary=5090, backup=5092, media=20000)
HANDOFFD = Endpoint("udp", "127.0.0.1", 5060)
DISP3 = """  disp-3:
    numbers: ["2003"]
    auth: {password: pw3}
  disp-4:
    uri: sip:disp4@127.0.0.1:5074
    auth: {username: d4, password: pw4}
"""


class Phone(Peer):
    """A softphone: registers (answering the 401 with digest credentials), then behaves as a
    :class:`Peer` (answers INVITE and OPTIONS)."""

    def __init__(self, net: Net, name: str, port: int, password: str) -> None:
        super().__init__(net, name, port)
        self.client = DigestClient(name, password)
        self.cseq = 0
        self.call_id = f"{new_tag()}@phone"
        self.peer_handle = self.handler
        self.handler = self._phone

    @property
    def contact(self) -> NameAddr:
        """The address it puts in Contact: after ``register(contact_port=...)``, that one (a
        phone behind NAT names its private address, where nothing reaches it)."""
        port = getattr(self, "contact_port", None) or self.ep.port
        return NameAddr(parse_uri(f"sip:{self.name}@127.0.0.1:{port}"))

    def register(self, *, contact_port: int | None = None, expires: int = 600) -> None:
        self.contact_port = contact_port or self.ep.port
        self._send_register(expires, None)

    def _send_register(self, expires: int, authorization: str | None) -> None:
        self.cseq += 1
        aor = NameAddr(parse_uri(f"sip:{self.name}@127.0.0.1"))
        contact = getattr(self, "contact_text", None)
        headers = [
            ("Contact", contact or f"<sip:{self.name}@127.0.0.1:{self.contact_port}>"),
            ("Expires", str(expires)),
        ]
        if authorization is not None:
            headers.append(("Authorization", authorization))
        self.expires = expires
        req = make_request(
            "REGISTER",
            parse_uri(REG_URI),
            via=self.via(),
            from_=aor.with_tag(new_tag()),
            to=aor,
            call_id=self.call_id,
            cseq=self.cseq,
            headers=headers,
        )
        self.send(req, HANDOFFD)

    def _phone(self, ev: Event) -> None:
        if isinstance(ev, ResponseReceived) and ev.response.cseq.method == "REGISTER":
            resp: Response = ev.response
            self.responses.append(resp)
            if resp.status == 401:
                challenge = choose_challenge(resp.headers.get_all("www-authenticate"))
                value = self.client.authorization(
                    challenge, method="REGISTER", uri=REG_URI, cnonce=new_tag()
                )
                self._send_register(self.expires, value)
            return
        self.peer_handle(ev)


class World:
    def __init__(self, tmp: Path, registrar: str = "", **peer_modes: str | int) -> None:
        path = write_setup(
            tmp, PORTS, ring_timeout=3.0, position_ring_timeout=5.0, positions=DISP3,
            registrar=registrar,
        )  # fmt: skip
        cfg = load_config(path)
        self.net = Net()
        self.node = Node(self.net, "handoffd", 5060)
        self.media = FakeMedia()
        self.core = B2bua(
            LayerPort(self.node), self.media, cfg, load_rules(cfg.rules), local={"udp": HANDOFFD}
        )
        self.node.handler = lambda ev: self.core.handle(ev, self.net.now)
        self.net.clocks.append(self.core.get_timer)
        self.net.tickers.append(self.core.handle_timer)
        self.caller = Peer(self.net, "caller", 5050)
        self.disp1 = Peer(self.net, "disp1", 5070)
        self.disp4 = Peer(self.net, "disp4", 5074)
        self.primary = Peer(self.net, "primary", 5090, peer_modes.get("primary", "answer"))
        self.backup = Peer(self.net, "backup", 5092, peer_modes.get("backup", "answer"))
        self.phone = Phone(self.net, "disp-3", 5080, "pw3")

    def dial(self, user: str) -> None:
        self.caller.call(HANDOFFD, user, (("P-Asserted-Identity", "<tel:+18055550123>"),))


def test_registered_phone_gets_the_call_at_the_register_source(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.phone.register(contact_port=5999)  # the Contact names an address nobody listens on (NAT)
    w.net.run()
    assert w.phone.statuses("REGISTER") == [401, 200]
    ok = w.phone.responses[-1]
    assert ok.headers.get_all("contact") == ["<sip:disp-3@127.0.0.1:5999>;expires=600"]
    assert ok.headers.get("date", "").endswith(" GMT")
    assert ok.to.tag  # the registrar is a UAS: the 200 carries a To tag
    w.dial("2003")
    w.net.advance(1.0)
    [invite] = w.phone.invites
    assert str(invite.uri) == "sip:disp-3@127.0.0.1:5999"  # retargeted to the contact ...
    assert w.caller.statuses()[-1] == 200  # ... and delivered to the REGISTER's source
    call = next(iter(w.core.calls.values()))
    assert call.position is not None and call.position.name == "disp-3"
    assert call.dispatcher is not None and call.dispatcher.dest == Endpoint(
        "udp", "127.0.0.1", 5080
    )


def test_a_phone_behind_nat_gets_every_request_where_it_registered_from(tmp_path: Path) -> None:
    """The phone's Contact (in REGISTER and in its 200) names port 5999, where nothing listens;
    the ACK, a re-INVITE and the BYE must still reach it at 5080, where its REGISTER came from."""
    w = World(tmp_path)
    w.phone.register(contact_port=5999)
    w.net.run()
    w.dial("2003")
    w.net.advance(1.0)
    assert w.caller.statuses()[-1] == 200
    assert w.phone.contact.uri.port == 5999
    acks = [r for r in w.phone.requests if r.method == "ACK"]
    assert len(acks) == 1 and str(acks[0].uri) == "sip:disp-3@127.0.0.1:5999"
    # the caller's re-INVITE goes on to the phone, and the phone's 200 is acknowledged there
    w.caller.in_dialog("INVITE", HANDOFFD, body=sdp(7050), content_type="application/sdp")
    w.net.advance(1.0)
    assert [r.method for r in w.phone.requests] == ["INVITE", "ACK", "INVITE", "ACK"]
    assert w.caller.statuses() == [100, 180, 200, 100, 200]
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    byes = [r for r in w.phone.requests if r.method == "BYE"]
    assert len(byes) == 1 and w.phone.dialog is None
    assert not w.core.calls


def test_unregistered_position_without_uri_gets_the_caller_480(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.dial("disp-3")
    w.net.run()
    final = w.caller.responses[-1]
    assert final.status == 480
    assert "not registered" in (final.headers.get("reason") or "")
    assert not w.core.calls and w.media.open_count == 0


def test_an_expired_registration_stops_the_calls(tmp_path: Path) -> None:
    w = World(tmp_path, registrar="  min_expires: 1\n  qualify_interval: 0\n")
    w.phone.register(expires=5)
    w.net.advance(4.0)
    assert len(w.core.registrar.machine.bindings("disp-3")) == 1
    w.net.advance(1.5)
    assert w.core.registrar.machine.bindings("disp-3") == []
    w.dial("disp-3")
    w.net.run()
    assert w.caller.responses[-1].status == 480 and not w.phone.invites


def test_too_brief_registration_over_the_network_is_423(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.phone.register(expires=10)
    w.net.run()
    assert w.phone.statuses("REGISTER") == [401, 423]
    assert w.phone.responses[-1].headers.get("min-expires") == "60"


def test_register_with_a_to_tag_goes_to_the_registrar(tmp_path: Path) -> None:
    w = World(tmp_path)
    # some phones refresh with the To tag of the last 200
    w.caller.send(request(to_tag="from-last-200", via_port=5050), HANDOFFD)
    w.net.run()
    assert w.caller.statuses("REGISTER") == [401]  # the registrar's challenge, not 481


def test_unreachable_contact_falls_back_to_the_uri_and_back(tmp_path: Path) -> None:
    w = World(tmp_path, registrar="  qualify_interval: 10\n  qualify_timeout: 2\n")
    phone4 = Phone(w.net, "d4", 5084, "pw4")
    phone4.register()
    w.net.advance(11.0)  # one qualify, answered
    [b] = w.core.registrar.machine.bindings("disp-4")
    assert b.state is Reach.REACHABLE
    assert any(r.method == "OPTIONS" for r in phone4.requests)
    del w.net.nodes[("127.0.0.1", 5084)]  # the phone is gone: the next OPTIONS goes unanswered
    w.net.advance(11.5)
    assert w.core.registrar.machine.bindings("disp-4")[0].state is Reach.UNREACHABLE
    w.dial("disp-4")
    w.net.advance(1.0)
    assert len(w.disp4.invites) == 1 and not phone4.invites  # the configured uri
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    w.net.add(phone4)  # back: the next qualify brings it back
    w.net.advance(10.0)
    assert w.core.registrar.machine.bindings("disp-4")[0].state is Reach.REACHABLE
    w.dial("disp-4")
    w.net.advance(1.0)
    assert len(phone4.invites) == 1 and len(w.disp4.invites) == 1


def test_recall_passes_over_an_unregistered_position(tmp_path: Path) -> None:
    w = World(tmp_path, primary="ring", backup=503)
    w.phone.register()
    w.net.run()
    w.dial("2003")
    w.net.advance(1.0)
    assert w.caller.statuses()[-1] == 200
    # the phone transfers blind, hangs up, and unregisters (the dispatcher logs off)
    w.phone.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
    w.net.advance(0.1)
    w.phone.in_dialog("BYE", HANDOFFD)
    w.phone.register(expires=0)
    w.net.advance(0.1)
    assert w.core.registrar.machine.bindings("disp-3") == []
    t = next(iter(w.core.transfers.values()))
    w.net.advance(3.5)  # primary rings out, backup 503: the chain is exhausted, recall
    assert t.state is TState.FAILED
    assert len(w.phone.invites) == 1  # disp-3 was passed over ...
    assert len(w.disp4.invites) == 1  # ... for the next position in the file with a uri
    assert w.core.calls, "the caller stays up"


def test_recall_with_no_reachable_position_waits_and_tries_again(tmp_path: Path) -> None:
    cfg_path = write_setup(tmp_path, PORTS, positions=DISP3)
    text = cfg_path.read_text()
    cut = text.index("  disp-1:")
    text = text[:cut] + text[text.index("  disp-3:") :]
    text = text.replace("    uri: sip:disp4@127.0.0.1:5074\n", "")
    text = text.replace("registrar:\n", "registrar:\n  qualify_interval: 0\n")
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    assert [p.uri for p in cfg.positions.values()] == [None, None]
    net = Net()
    node = Node(net, "handoffd", 5060)
    core = B2bua(LayerPort(node), FakeMedia(), cfg, load_rules(cfg.rules), local={"udp": HANDOFFD})
    node.handler = lambda ev: core.handle(ev, net.now)
    net.clocks.append(core.get_timer)
    net.tickers.append(core.handle_timer)
    caller = Peer(net, "caller", 5050)
    Peer(net, "primary", 5090, "ring")
    Peer(net, "backup", 5092, 503)
    phone = Phone(net, "disp-3", 5080, "pw3")
    phone.register()
    net.run()
    caller.call(HANDOFFD, "disp-3")
    net.advance(1.0)
    phone.in_dialog("REFER", HANDOFFD, headers=(("Refer-To", "<sip:988@127.0.0.1>"),))
    net.advance(0.1)
    phone.in_dialog("BYE", HANDOFFD)
    phone.register(expires=0)
    net.advance(5.0)  # the transfer fails; nobody can be recalled: handoffd keeps looking
    assert core.calls and len(phone.invites) == 1
    phone.register()  # the dispatcher logs on again
    net.advance(3.0)
    assert len(phone.invites) == 2, "the caller is recalled to the position once it registers"
    call = next(iter(core.calls.values()))
    assert call.state == "connected" and call.dispatcher is not None
    assert call.dispatcher.dest == Endpoint("udp", "127.0.0.1", 5080)


def test_logs_never_carry_the_caller_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    w = World(tmp_path)
    w.phone.register()
    w.net.run()
    w.dial("2003")
    w.net.advance(1.0)
    w.caller.in_dialog("BYE", HANDOFFD)
    w.net.advance(1.0)
    assert "registrar: disp-3 registered" in caplog.text
    assert "8055550123" not in caplog.text


# ------------------------------------------------------------------------------ the config


def _config(
    tmp: Path, positions: str, registrar: str = "", env: dict[str, str] | None = None
) -> tuple[Path, Callable[[], Config]]:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "r.yaml").write_text(
        "destinations:\n  d:\n    uri: sip:988@127.0.0.1:5090\n"
        "rules:\n  - name: x\n    mode: cold\n    chain: [d]\n"
    )
    path = tmp / "h.yaml"
    path.write_text(
        "trunks:\n  t:\n    allow: [127.0.0.0/8]\n    psap_id: p\nrules: rules\n"
        f"positions:\n{positions}" + (f"registrar:\n{registrar}" if registrar else "")
    )
    return path, (lambda: load_config(path, env=env or {}))


def test_config_positions_may_omit_uri_when_they_have_auth(tmp_path: Path) -> None:
    _, load = _config(
        tmp_path,
        "  a:\n    auth: {password_env: A_PW}\n  b:\n    uri: sip:b@127.0.0.1\n"
        "    auth: {username: '1001', password: x}\n",
        env={"A_PW": "s3cret"},
    )
    cfg = load()
    assert cfg.positions["a"].uri is None
    assert cfg.positions["a"].auth == PositionAuth("a", "s3cret")
    assert cfg.positions["b"].auth == PositionAuth("1001", "x")
    assert "s3cret" not in repr(cfg.positions["a"])  # never in a log line by accident
    assert cfg.registrar == RegistrarConfig()


def test_config_problems_name_file_and_line(tmp_path: Path) -> None:
    path, load = _config(
        tmp_path,
        "  a: {numbers: ['1']}\n"  # 7
        "  b:\n    auth: {password_env: NOT_SET}\n"  # 8, 9
        "  c:\n    auth: {username: b, password: x, password_env: Y}\n"  # 10, 11
        "  d:\n    auth: 5\n",  # 12, 13
        "  min_expires: 100\n  default_expires: 50\n",  # 14-16
    )
    with pytest.raises(ConfigError) as err:
        load()
    f = str(path)
    assert err.value.problems == (
        f"{f}:7: positions.a: give uri (where calls go), auth (so its softphone can register), "
        "or both",
        f"{f}:9: positions.b.auth.password_env: NOT_SET is not set (or empty)",
        f"{f}:11: positions.c.auth.username: 'b' is position 'b''s username too (line 9)",
        f"{f}:11: positions.c.auth: give exactly one of password_env and password",
        f"{f}:13: positions.d.auth must be a mapping (key: value lines), not '5'",
        f"{f}:16: registrar: min_expires <= default_expires <= max_expires does not hold "
        "(100, 50, 3600)",
    )


def test_config_registrar_values(tmp_path: Path) -> None:
    _, load = _config(
        tmp_path,
        "  a:\n    auth: {password: x}\n",
        "  realm: psap.example\n  algorithms: [MD5]\n  qualify_interval: 0\n  max_contacts: 1\n",
    )
    cfg = load().registrar
    assert (cfg.realm, cfg.algorithms, cfg.qualify_interval, cfg.max_contacts) == (
        "psap.example",
        ("MD5",),
        0.0,
        1,
    )
    _, load = _config(
        tmp_path,
        "  a:\n    auth: {password: x}\n",
        "  algorithms: [SHA-512]\n  qualify_interval: 2\n  qualify_timeout: 2\n",
    )
    with pytest.raises(ConfigError) as err:
        load()
    assert len(err.value.problems) == 1 and "SHA-512" in err.value.problems[0]


def test_every_registrar_key_is_documented_and_in_the_example() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "config" / "handoffd.yaml").read_text()
    assert "### `registrar`" in docs
    for key in REGISTRAR_KEYS:
        assert f"`registrar.{key}`" in docs
        assert f"\n  {key}: " in example
    for key in AUTH_KEYS:
        assert f"`positions.NAME.auth.{key}`" in docs
    assert "`positions.NAME.auth`" in docs
    cfg = load_config(ROOT / "config" / "handoffd.yaml", env={})
    assert cfg.registrar == RegistrarConfig()  # the example shows the defaults


_odd = (
    st.binary(min_size=1, max_size=60)
    .filter(lambda b: not any(c in b for c in b"\r\n\x00") and b.strip() == b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)
_contact = st.one_of(
    _odd,
    _odd.map(lambda v: f"<sip:{v}@127.0.0.1:5080>"),
    _odd.map(lambda v: f"<sip:disp-3@127.0.0.1:5080>;expires={v}"),
    st.just("*"),
)
_auth = st.one_of(
    _odd,
    _odd.map(lambda v: f'Digest username="disp-3", realm="{v}", nonce="{v}", response="{v}"'),
    _odd.map(lambda v: f"Digest {v}"),
)


@settings(max_examples=300, deadline=None)
@given(
    aor=st.sampled_from(("disp-1", "disp-3", "disp-4", "nobody")),
    contacts=st.lists(_contact, max_size=3),
    expires=st.one_of(st.none(), _odd, st.integers(-5, 10**12).map(str)),
    auth=st.one_of(st.none(), _auth),
)
def test_any_register_gets_one_answer_that_can_be_sent(
    aor: str, contacts: list[str], expires: str | None, auth: str | None
) -> None:
    """Whatever a phone (or a scanner) puts in a REGISTER: the registrar answers with a status
    and headers that make a valid response, and binds nothing without credentials."""
    reg = machine()
    headers = (("Authorization", auth),) if auth is not None else ()
    req = request(aor=aor, contacts=tuple(contacts), expires=expires, headers=headers)
    reply = reg.register(req, PHONE, NOW)
    assert 200 <= reply.status <= 699
    response = make_response(req, reply.status, to_tag="t", headers=reply.headers)
    assert response.to_bytes().startswith(b"SIP/2.0 %d " % reply.status)
    assert not changed(reg)  # no binding without a valid password


@settings(max_examples=150, deadline=None)
@given(
    user=st.sampled_from(("disp-3", "", "x%20y", "+1805")),
    host=st.sampled_from(("127.0.0.1", "[::1]", "localhost", "10.0.0.1", "phone.invalid")),
    port=st.sampled_from(("", ":1", ":5999", ":65535")),
    params=st.sampled_from(
        ("", ";transport=tcp", ";transport=tls", ";transport=sctp", ";transport=ws", ";ob",
         ";maddr=127.0.0.1", ";lr", ";transport=UDP;ob")
    ),
)  # fmt: skip
def test_a_registered_contact_of_any_shape_still_gets_the_caller_a_final_answer(
    tmp_path_factory: pytest.TempPathFactory, user: str, host: str, port: str, params: str
) -> None:
    """Whatever (parseable) Contact a phone registers: a call to its position is answered or
    refused (never rings forever), nothing raises, and the call ends cleanly."""
    w = World(tmp_path_factory.mktemp("w"))
    at = f"{user}@" if user else ""
    w.phone.contact_text = f"<sip:{at}{host}{port}{params}>"  # type: ignore[attr-defined]
    w.phone.register()
    w.net.run()
    assert w.phone.statuses("REGISTER")[-1] in (200, 400), w.phone.statuses("REGISTER")
    w.dial("2003")
    w.net.advance(40.0)
    w.caller.hang_up_if_answered(HANDOFFD)
    w.net.advance(40.0)
    assert not w.core.calls and w.media.open_count == 0
