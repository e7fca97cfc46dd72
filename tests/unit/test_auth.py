"""Digest authentication: published vectors, parsing, client/server behaviour."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.sip.auth import (
    Challenge,
    Credentials,
    DigestClient,
    DigestServer,
    authorization,
    choose_challenge,
    compute_ha1,
    format_challenge,
    format_credentials,
    parse_challenge,
    parse_credentials,
)
from telephony.sip.errors import ParseError, SipError
from tests.vectors import load_vector

CASES: list[dict[str, Any]] = json.loads(load_vector("auth/digest.json"))["cases"]

REALM = "psap.example.net"
SECRET = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0
SALT = bytes(8)
USERS = {"trunk988": "s3cret pass", 'we"ird\\name': "pw"}
REQUEST_URI = "sip:988@crisis.example.org;transport=tcp"


def lookup(username: str, realm: str) -> str | None:
    return USERS.get(username) if realm == REALM else None


# ---------------------------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["source"] for c in CASES])
def test_client_reproduces_published_response(case: dict[str, Any]) -> None:
    challenge = parse_challenge(case["challenge"])
    header = authorization(
        challenge,
        method=case["method"],
        uri=case["uri"],
        username=case["username"],
        password=case["password"],
        cnonce=case["cnonce"],
        nc=case["nc"],
    )
    creds = parse_credentials(header)
    assert creds.response == case["response"]
    assert creds.algorithm == case["algorithm"]
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", case["cnonce"])
    assert creds.opaque == challenge.opaque
    # Same fields as the RFC's own Authorization header, whatever the order.
    assert creds == parse_credentials(case["authorization"])


@pytest.mark.parametrize("case", CASES, ids=[c["source"] for c in CASES])
def test_published_authorization_parses(case: dict[str, Any]) -> None:
    creds = parse_credentials(case["authorization"])
    assert creds.username == "Mufasa"
    assert creds.uri == "/dir/index.html"
    assert creds.nonce_count == 1
    assert creds.response == case["response"]


def test_rfc2617_challenge_fields() -> None:
    challenge = parse_challenge(CASES[0]["challenge"])
    assert challenge == Challenge(
        scheme="Digest",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        algorithm="MD5",
        qop=("auth", "auth-int"),
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_parse_is_case_and_whitespace_tolerant() -> None:
    value = (
        ' dIgEsT\tREALM = "r" ,NONCE="n",  Algorithm=sha-256 , QOP="Auth , auth-int",'
        ' stale=TRUE, domain="sip:a.example sip:b.example",, x-vendor=abc'
    )
    challenge = parse_challenge(value)
    assert challenge.realm == "r"
    assert challenge.nonce == "n"
    assert challenge.algorithm == "SHA-256"
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.stale is True
    assert challenge.domain == ("sip:a.example", "sip:b.example")
    assert challenge.params == (("x-vendor", "abc"),)


def test_challenge_defaults() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n"')
    assert (challenge.algorithm, challenge.qop, challenge.stale) == ("MD5", (), False)
    assert challenge.opaque is None
    assert challenge.supported


def test_unknown_algorithm_is_kept_but_unsupported() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512-256')
    assert challenge.algorithm == "SHA-512-256"
    assert not challenge.supported
    with pytest.raises(ParseError):
        authorization(
            challenge, method="INVITE", uri="sip:x", username="u", password="p", cnonce="c"
        )


def test_quoted_string_unescapes() -> None:
    challenge = parse_challenge(r'Digest realm="a \"quoted\" realm\\x", nonce="n\,m"')
    assert challenge.realm == 'a "quoted" realm\\x'
    assert challenge.nonce == "n,m"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Digest   ",
        'Basic realm="r", nonce="n"',
        'Digest realm="r"',
        'Digest nonce="n"',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", realm="s", nonce="n"',
        'Digest realm="r, nonce="n"',
        'Digest realm="r", nonce="n\\',
        'Digest realm=, nonce="n"',
        'Digest realm="r", nonce="n", ="x"',
        'Digest realm="r", nonce="n", x',
        'Digest realm="r\r\n", nonce="n"',
        'Digest realm="r\\\n", nonce="n"',
        'Digest,realm="r", nonce="n"',
    ],
)
def test_malformed_challenge_raises_parse_error(value: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_challenge(value)
    assert info.value.status == 400
    assert info.value.side == "peer"


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", realm="r", nonce="n", uri="sip:x"',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth, '
        'cnonce="c", nc=1',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth, '
        'cnonce="c", nc=0000000g',
    ],
)
def test_malformed_credentials_raise_parse_error(value: str) -> None:
    with pytest.raises(ParseError):
        parse_credentials(value)


def test_credentials_without_qop_are_rfc2617_form() -> None:
    creds = parse_credentials(
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", opaque="o"'
    )
    assert (creds.qop, creds.cnonce, creds.nc, creds.nonce_count) == (None, None, None, None)
    assert creds.opaque == "o"


def parse_or_error(value: str) -> list[Challenge | Credentials | ParseError]:
    """Both parsers on ``value``: each gives its object or a ParseError, never anything else."""
    out: list[Challenge | Credentials | ParseError] = []
    for parse in (parse_challenge, parse_credentials):
        try:
            out.append(parse(value))
        except ParseError as error:
            assert error.status == 400
            out.append(error)
    return out


@given(st.text())
def test_arbitrary_text_gives_object_or_parse_error(value: str) -> None:
    challenge, credentials = parse_or_error(value)
    assert isinstance(challenge, Challenge | ParseError)
    assert isinstance(credentials, Credentials | ParseError)


# Well-formed parameter lists, then (sometimes) junk spliced in: both outcomes get exercised.
_FRAGMENTS = ['"', "=", ",", " ", "\t", "\\", "\r", "\x00", "\x7f", "é", "\udc80", "x"]
_VALUE = st.text(
    alphabet=st.sampled_from(["a", '"', "\\", ",", " ", "\t", "=", "é", "\udc80", "/"])
)


def _render(name: str, value: str, quoted: bool) -> str:
    if quoted:
        return name + '="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name + "=" + ("".join(c for c in value if c.isalnum()) or "v")


_PARAMS = st.permutations(
    ["realm", "nonce", "username", "uri", "response", "qop", "nc", "cnonce", "stale", "X-y"]
).flatmap(
    lambda names: st.tuples(
        *(st.tuples(st.just(n), _VALUE, st.booleans()) for n in names[: len(names) - 2])
    )
)


def _splice(params: tuple[tuple[str, str, bool], ...], sep: str, junk: str, at: int) -> str:
    text = sep.join(_render(*p) for p in params)
    return text[:at] + junk + text[at:]


_GRAMMAR = st.builds(
    _splice,
    _PARAMS,
    st.sampled_from([", ", ",", " ,\t", ",, "]),
    st.one_of(st.just(""), st.sampled_from(_FRAGMENTS)),
    st.integers(min_value=0, max_value=400),
)


@given(st.builds(lambda a: "Digest " + a, _GRAMMAR))
def test_grammar_fuzz_parses_to_something_that_round_trips(value: str) -> None:
    challenge, credentials = parse_or_error(value)
    if isinstance(challenge, Challenge):
        assert parse_challenge(format_challenge(challenge)) == challenge
    if isinstance(credentials, Credentials):
        assert parse_credentials(format_credentials(credentials)) == credentials


_QUOTABLE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f")
)


@given(realm=_QUOTABLE, nonce=_QUOTABLE, opaque=st.none() | _QUOTABLE, extra=_QUOTABLE)
def test_challenge_format_parse_round_trip(
    realm: str, nonce: str, opaque: str | None, extra: str
) -> None:
    challenge = Challenge(
        "Digest", realm, nonce, "SHA-256", ("auth",), opaque, True, (), (("x-extra", extra),)
    )
    assert parse_challenge(format_challenge(challenge)) == challenge


@given(username=_QUOTABLE, uri=_QUOTABLE, cnonce=_QUOTABLE.filter(bool))
def test_credentials_round_trip_any_quotable_text(username: str, uri: str, cnonce: str) -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth"')
    header = authorization(
        challenge, method="REGISTER", uri=uri, username=username, password="p", cnonce=cnonce
    )
    creds = parse_credentials(header)
    assert (creds.username, creds.uri, creds.cnonce) == (username, uri, cnonce)
    assert parse_credentials(format_credentials(creds)) == creds


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def test_quoted_values_are_escaped_in_output() -> None:
    challenge = parse_challenge(r'Digest realm="r\"1", nonce="n", qop="auth", opaque="o\\p"')
    header = authorization(
        challenge, method="INVITE", uri="sip:x", username='a"b\\c', password="p", cnonce="c"
    )
    assert 'username="a\\"b\\\\c"' in header
    assert 'realm="r\\"1"' in header
    assert 'opaque="o\\\\p"' in header
    assert "nc=00000001" in header
    assert "qop=auth," in header
    creds = parse_credentials(header)
    assert (creds.username, creds.realm, creds.opaque) == ('a"b\\c', 'r"1', "o\\p")


def test_local_control_characters_are_refused() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n"')
    with pytest.raises(SipError) as info:
        authorization(
            challenge, method="INVITE", uri="sip:x", username="a\r\nVia: x", password="p", cnonce=""
        )
    assert info.value.side == "local"
    assert not isinstance(info.value, ParseError)


def test_nc_is_eight_hex_digits_and_checked() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth"')
    header = authorization(
        challenge, method="INVITE", uri="sip:x", username="u", password="p", cnonce="c", nc=255
    )
    assert parse_credentials(header).nc == "000000ff"
    for bad in (0, 1 << 32):
        with pytest.raises(SipError):
            authorization(
                challenge,
                method="INVITE",
                uri="sip:x",
                username="u",
                password="p",
                cnonce="c",
                nc=bad,
            )


def test_rfc2617_compatibility_without_qop() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="abc", opaque="o"')
    header = authorization(
        challenge, method="INVITE", uri="sip:b@x", username="u", password="p", cnonce="ignored"
    )
    creds = parse_credentials(header)
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    expected = md5(f"{md5('u:r:p')}:abc:{md5('INVITE:sip:b@x')}")
    assert creds.response == expected


def test_auth_int_only_hashes_the_body() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    args: dict[str, Any] = {"method": "INVITE", "uri": "sip:x", "username": "u", "password": "p"}
    one = parse_credentials(authorization(challenge, cnonce="c", body=b"v=0", **args))
    two = parse_credentials(authorization(challenge, cnonce="c", body=b"v=1", **args))
    assert one.qop == "auth-int"
    assert one.response != two.response


def test_challenge_with_only_unknown_qop_cannot_be_answered() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-conf"')
    assert not challenge.supported
    with pytest.raises(ParseError):
        authorization(
            challenge, method="INVITE", uri="sip:x", username="u", password="p", cnonce="c"
        )


def test_client_counts_per_nonce() -> None:
    client = DigestClient("u", "p")
    first = parse_challenge('Digest realm="r", nonce="n1", qop="auth"')
    second = parse_challenge('Digest realm="r", nonce="n2", qop="auth"')

    def nc(challenge: Challenge) -> str | None:
        header = client.authorization(challenge, method="INVITE", uri="sip:x", cnonce="c")
        return parse_credentials(header).nc

    assert [nc(first), nc(first), nc(second), nc(first)] == [
        "00000001",
        "00000002",
        "00000001",
        "00000003",
    ]


def test_choose_prefers_sha256_whatever_the_order() -> None:
    md5 = 'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"'
    sha = 'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"'
    assert choose_challenge([md5, sha]).algorithm == "SHA-256"
    assert choose_challenge([sha, md5]).algorithm == "SHA-256"


def test_choose_keeps_server_order_among_equals_and_skips_unusable() -> None:
    values = [
        "Bearer realm=x",
        'Digest realm="r", nonce="bad',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        'Digest realm="other", nonce="m", algorithm=SHA-256, qop="auth"',
    ]
    assert choose_challenge(values).algorithm == "SHA-256-sess"
    assert choose_challenge(values, realm="other").nonce == "m"
    with pytest.raises(ParseError):
        choose_challenge(values[:3])
    with pytest.raises(ParseError):
        choose_challenge([])


# ---------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------


def make_server(**kwargs: Any) -> DigestServer:
    return DigestServer(REALM, SECRET, **kwargs)


def answer(
    server: DigestServer,
    now: float,
    *,
    username: str = "trunk988",
    password: str = "s3cret pass",
    algorithm: str | None = None,
    nc: int = 1,
    method: str = "INVITE",
) -> str:
    values = server.challenge(now, salt=SALT)
    challenge = choose_challenge(values)
    if algorithm is not None:
        challenge = next(c for c in map(parse_challenge, values) if c.algorithm == algorithm)
    return authorization(
        challenge,
        method=method,
        uri=REQUEST_URI,
        username=username,
        password=password,
        cnonce="0a4f113b",
        nc=nc,
    )


def test_server_challenges_in_preference_order() -> None:
    values = make_server().challenge(T0, salt=SALT)
    challenges = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.realm == REALM and c.qop == ("auth",) and not c.stale for c in challenges)
    assert len({c.nonce for c in challenges}) == 1


def test_fresh_nonces_differ() -> None:
    server = make_server()
    assert server.new_nonce(T0) != server.new_nonce(T0)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_round_trip(algorithm: str) -> None:
    server = make_server(algorithms=(algorithm,))
    header = answer(server, T0, algorithm=algorithm)
    assert parse_credentials(header).algorithm == algorithm
    result = server.verify(header, method="INVITE", now=T0 + 1, lookup_password=lookup)
    assert (result.ok, result.username, result.stale) == (True, "trunk988", False)


def test_nonce_from_another_instance_with_the_same_secret_verifies() -> None:
    header = answer(make_server(), T0)
    result = make_server().verify(header, method="INVITE", now=T0 + 2, lookup_password=lookup)
    assert result.ok


def test_ha1_lookup() -> None:
    def ha1(username: str, realm: str, algorithm: str) -> str | None:
        return compute_ha1(algorithm, username, realm, USERS[username]).upper()

    result = make_server().verify(
        answer(make_server(), T0), method="INVITE", now=T0, lookup_ha1=ha1
    )
    assert result.ok
    with pytest.raises(TypeError):
        make_server().verify(answer(make_server(), T0), method="INVITE", now=T0)


def test_escaped_username_round_trip() -> None:
    header = answer(make_server(), T0, username='we"ird\\name', password="pw")
    result = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert (result.ok, result.username) == (True, 'we"ird\\name')


def test_wrong_password() -> None:
    header = answer(make_server(), T0, password="guess")
    result = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert (result.ok, result.stale, result.reason) == (False, False, "bad response")


def test_wrong_method_fails() -> None:
    header = answer(make_server(), T0, method="REGISTER")
    result = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert not result.ok


def test_unknown_user() -> None:
    header = answer(make_server(), T0, username="nobody")
    result = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert (result.ok, result.stale, result.reason) == (False, False, "unknown user")


def test_wrong_realm() -> None:
    other = DigestServer("other.example", SECRET)
    result = make_server().verify(
        answer(other, T0), method="INVITE", now=T0, lookup_password=lambda u, r: "s3cret pass"
    )
    assert (result.ok, result.reason) == (False, "realm mismatch")


def test_algorithm_not_offered() -> None:
    header = answer(make_server(), T0, algorithm="MD5")
    result = make_server(algorithms=("SHA-256",)).verify(
        header, method="INVITE", now=T0, lookup_password=lookup
    )
    assert not result.ok


def test_expired_nonce_is_stale_and_rechallenge_says_so() -> None:
    server = make_server(nonce_ttl=300.0)
    header = answer(server, T0)
    assert server.verify(header, method="INVITE", now=T0 + 299, lookup_password=lookup).ok
    result = server.verify(
        answer(server, T0, nc=2), method="INVITE", now=T0 + 301, lookup_password=lookup
    )
    assert (result.ok, result.stale, result.reason) == (False, True, "nonce expired")
    fresh = [parse_challenge(v) for v in server.challenge(T0 + 301, stale=result.stale)]
    assert all(c.stale for c in fresh)


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    server = make_server()
    header = answer(server, T0, password="guess")
    result = server.verify(header, method="INVITE", now=T0 + 3600, lookup_password=lookup)
    assert (result.ok, result.stale) == (False, False)


def test_nonce_from_the_future_is_refused() -> None:
    server = make_server()
    result = server.verify(answer(server, T0 + 60), method="INVITE", now=T0, lookup_password=lookup)
    assert (result.ok, result.stale) == (False, True)


def test_forged_nonce_is_refused() -> None:
    server = make_server()
    real = parse_challenge(server.challenge(T0, salt=SALT)[0])
    # A later issue time under the old MAC: the attacker wants a nonce that never expires.
    forged_nonce = f"{int(T0 * 1000) + 10**9:012x}" + real.nonce[12:]
    for nonce in (forged_nonce, "not-a-nonce", real.nonce.upper()):
        forged = Challenge("Digest", REALM, nonce, "SHA-256", ("auth",))
        header = authorization(
            forged, method="INVITE", uri="sip:x", username="trunk988", password="guess", cnonce="c"
        )
        result = server.verify(header, method="INVITE", now=T0, lookup_password=lookup)
        assert (result.ok, result.stale) == (False, False)
        # Even with the right password a foreign nonce never authenticates; it is only stale.
        header = authorization(
            forged,
            method="INVITE",
            uri="sip:x",
            username="trunk988",
            password="s3cret pass",
            cnonce="c",
        )
        result = server.verify(header, method="INVITE", now=T0, lookup_password=lookup)
        assert (result.ok, result.stale, result.reason) == (False, True, "nonce not issued here")


def test_different_secret_does_not_verify() -> None:
    header = answer(DigestServer(REALM, b"another secret of 32 bytes......"), T0)
    result = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert not result.ok


def test_replayed_nonce_count_is_refused() -> None:
    server = make_server()
    header = answer(server, T0)
    assert server.verify(header, method="INVITE", now=T0, lookup_password=lookup).ok
    replay = server.verify(header, method="INVITE", now=T0 + 1, lookup_password=lookup)
    assert (replay.ok, replay.stale, replay.reason) == (False, False, "nonce count replayed")
    assert server.verify(
        answer(server, T0, nc=3), method="INVITE", now=T0, lookup_password=lookup
    ).ok
    lower = server.verify(answer(server, T0, nc=2), method="INVITE", now=T0, lookup_password=lookup)
    assert not lower.ok


def test_qop_is_required_unless_configured() -> None:
    nonce = make_server().new_nonce(T0, SALT)
    legacy = Challenge("Digest", REALM, nonce, "MD5")
    header = authorization(
        legacy, method="INVITE", uri="sip:x", username="trunk988", password="s3cret pass", cnonce=""
    )
    strict = make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup)
    assert (strict.ok, strict.reason) == (False, "qop required")
    lenient = make_server(require_qop=False)
    assert lenient.verify(header, method="INVITE", now=T0, lookup_password=lookup).ok


def test_auth_int_is_not_accepted_when_only_auth_was_offered() -> None:
    nonce = make_server().new_nonce(T0, SALT)
    offered = Challenge("Digest", REALM, nonce, "SHA-256", ("auth-int",))
    header = authorization(
        offered,
        method="INVITE",
        uri="sip:x",
        username="trunk988",
        password="s3cret pass",
        cnonce="c",
    )
    assert not make_server().verify(header, method="INVITE", now=T0, lookup_password=lookup).ok


def test_malformed_credentials_raise_400() -> None:
    with pytest.raises(ParseError) as info:
        make_server().verify('Digest username="u"', method="INVITE", now=T0, lookup_password=lookup)
    assert info.value.status == 400


def test_replay_table_is_bounded_and_eviction_keeps_replays_out() -> None:
    server = make_server(max_tracked=4)
    headers = []
    for i in range(10):
        values = server.challenge(T0 + i, salt=bytes([i]) * 8)
        header = authorization(
            parse_challenge(values[0]),
            method="INVITE",
            uri="sip:x",
            username="trunk988",
            password="s3cret pass",
            cnonce="c",
        )
        assert server.verify(header, method="INVITE", now=T0 + i, lookup_password=lookup).ok
        assert server.tracked <= 4
        headers.append(header)
    # The first nonce was evicted; replaying its nc=1 must not succeed.
    result = server.verify(headers[0], method="INVITE", now=T0 + 10, lookup_password=lookup)
    assert (result.ok, result.stale) == (False, True)


def test_expired_nonces_are_pruned() -> None:
    server = make_server(nonce_ttl=10.0)
    assert server.verify(answer(server, T0), method="INVITE", now=T0, lookup_password=lookup).ok
    assert server.tracked == 1
    later = T0 + 100
    assert server.verify(
        answer(server, later), method="INVITE", now=later, lookup_password=lookup
    ).ok
    assert server.tracked == 1


def test_server_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        DigestServer(REALM, b"short")
    with pytest.raises(ValueError):
        DigestServer(REALM, SECRET, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestServer(REALM, SECRET, algorithms=())
