"""The routing rule engine: every condition, time windows (midnight, days, zones, DST), first-match
order across files, chains and fallback, the metadata policy merge, and match == explain for any
call (hypothesis)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.routing import (
    CallDescription,
    Decision,
    MetadataPolicy,
    RulesError,
    RuleSet,
    language_from_accept_language,
    load_rules,
    parse_rules,
)
from tests.vectors import load_vector, vector_names

LA = ZoneInfo("America/Los_Angeles")
NOON = datetime(2026, 6, 10, 12, 0, tzinfo=LA)  # a Wednesday

DEST = "    chain:\n      - uri: sip:988@127.0.0.1:5090\n"


def rules(text: str, **kw: object) -> RuleSet:
    return parse_rules([("t.yaml", textwrap.dedent(text))], **kw)  # type: ignore[arg-type]


def one_rule(match: str, *, head: str = "") -> RuleSet:
    """A rule set whose only rule is ``hit`` with the given match block (indented YAML)."""
    body = textwrap.indent(textwrap.dedent(match).strip(), "      ")
    return rules(f"{head}rules:\n  - name: hit\n    match:\n{body}\n    mode: cold\n{DEST}")


def hits(rs: RuleSet, now: datetime = NOON, **call: object) -> bool:
    return rs.match(CallDescription(**call), now) is not None  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- conditions


def test_trunk_one_or_a_list() -> None:
    assert hits(one_rule("trunk: psap-a"), trunk="psap-a")
    assert not hits(one_rule("trunk: psap-a"), trunk="psap-b")
    assert not hits(one_rule("trunk: psap-a"))  # no trunk known: a tested condition fails
    listed = one_rule("trunk: [psap-a, psap-b]")
    assert hits(listed, trunk="psap-b") and not hits(listed, trunk="psap-c")


def test_called_exact_number_ignores_visual_separators() -> None:
    rs = one_rule('called: "988"')
    assert hits(rs, called="988")
    assert hits(rs, called="9-8-8")
    assert not hits(rs, called="9880")
    assert not hits(rs, called="1988")
    assert not hits(rs)
    # unquoted, YAML would read a number: the loader reads the text as written
    assert hits(one_rule("called: 0988"), called="0988")


def test_called_pattern_must_match_the_whole_number() -> None:
    rs = one_rule('called_pattern: "1?988"')
    assert hits(rs, called="988") and hits(rs, called="1988") and hits(rs, called="1-988")
    assert not hits(rs, called="19880")
    assert not hits(rs, called="21988")
    assert not hits(rs)


def test_caller_prefix() -> None:
    rs = one_rule('caller_prefix: ["+1805", "+1820"]')
    assert hits(rs, caller="+18055550123")
    assert hits(rs, caller="+1 (820) 555-0123")
    assert not hits(rs, caller="+18185550123")
    assert not hits(rs, caller="18055550123")  # a prefix is literal: no "+" here
    assert not hits(rs, caller="anonymous")
    assert not hits(rs)


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("+18055550123", True),
        ("18055550123", True),
        ("8055550123", True),
        ("(805) 555-0123", True),
        ("+18185550123", False),
        ("+448055550123", False),  # not NANP
        ("805555012", False),  # too short
        ("anonymous", False),
    ],
)
def test_area_code(caller: str, expected: bool) -> None:
    assert hits(one_rule('area_code: ["805"]'), caller=caller) is expected


def test_triage_one_or_a_list() -> None:
    rs = one_rule("triage: [1, 2]")
    assert hits(rs, triage=1) and hits(rs, triage=2)
    assert not hits(rs, triage=3)
    assert not hits(rs)


def test_language_matches_a_tag_and_its_subtags() -> None:
    rs = one_rule("language: [es, pt-BR]")
    for tag in ("es", "ES", "es-MX", "es-419", "pt-br"):
        assert hits(rs, language=tag), tag
    for tag in ("est", "en", "pt", "pt-PT", ""):
        assert not hits(rs, language=tag), tag
    assert not hits(rs)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("es-MX,es;q=0.9,en;q=0.8", "es-mx"),
        ("en;q=0.2, es;q=0.8", "es"),
        ("en;q=0.5, fr", "fr"),  # no q means 1
        ("de, fr", "de"),  # a tie: the first wins
        ("*;q=1, de;q=0.1", "de"),  # the wildcard names no language
        ("fr;q=0", None),  # q=0: not acceptable
        ("fr;q=1.5, it;q=0.4", "it"),  # an impossible q-value is ignored
        ("en;q=abc, es;q=0.1", "es"),
        ("", None),
        ("???", None),
    ],
)
def test_language_from_accept_language(header: str, expected: str | None) -> None:
    assert language_from_accept_language(header) == expected


def test_conditions_and_together_and_a_rule_without_match_is_a_catch_all() -> None:
    rs = one_rule("triage: 1\nlanguage: es")
    assert hits(rs, triage=1, language="es")
    assert not hits(rs, triage=1, language="en")
    assert not hits(rs, triage=2, language="es")
    catch_all = rules(f"rules:\n  - name: all\n    mode: warm\n{DEST}")
    assert hits(catch_all) and hits(catch_all, trunk="x", triage=3, caller="junk")


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        one_rule("triage: 1").match(CallDescription(triage=1), datetime(2026, 1, 1))


# ----------------------------------------------------------------------------- time windows


def la(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=LA)


def test_hours_start_included_end_excluded() -> None:
    rs = one_rule('time: {hours: "08:00-17:00"}', head="timezone: America/Los_Angeles\n")
    assert not hits(rs, la(2026, 6, 10, 7, 59, 59))
    assert hits(rs, la(2026, 6, 10, 8))
    assert hits(rs, la(2026, 6, 10, 16, 59, 59))
    assert not hits(rs, la(2026, 6, 10, 17))


def test_window_over_midnight_belongs_to_the_day_it_starts() -> None:
    rs = one_rule(
        'time: {days: [fri], hours: "22:00-06:00"}', head="timezone: America/Los_Angeles\n"
    )
    # 2026-06-12 is a Friday
    assert not hits(rs, la(2026, 6, 12, 21, 59))
    assert hits(rs, la(2026, 6, 12, 22))
    assert hits(rs, la(2026, 6, 12, 23, 59))
    assert hits(rs, la(2026, 6, 13, 0, 0))  # Saturday morning: still Friday's night
    assert hits(rs, la(2026, 6, 13, 5, 59))
    assert not hits(rs, la(2026, 6, 13, 6))
    assert not hits(rs, la(2026, 6, 13, 23))  # Saturday night is not Friday night
    assert not hits(rs, la(2026, 6, 12, 3))  # Friday early morning is Thursday's night
    assert not hits(rs, la(2026, 6, 11, 23))


def test_days_ranges_wrap_over_the_week_end() -> None:
    rs = one_rule("time: {days: [fri-mon]}", head="timezone: America/Los_Angeles\n")
    # 2026-06-08 is a Monday
    week = [hits(rs, la(2026, 6, day, 12)) for day in range(8, 15)]
    assert week == [True, False, False, False, True, True, True]
    full = one_rule("time: {days: [Monday, wed], hours: 00:00-24:00, timezone: UTC}")
    assert hits(full, datetime(2026, 6, 10, 23, 59, 59, tzinfo=UTC))
    assert not hits(full, datetime(2026, 6, 9, 12, tzinfo=UTC))


def test_a_window_is_read_on_the_wall_clock_of_its_own_zone() -> None:
    rs = one_rule(
        """
        time:
          - {hours: "09:00-17:00", timezone: Asia/Tokyo}
          - {hours: "09:00-10:00"}
        """,
        head="timezone: America/New_York\n",
    )
    assert hits(rs, datetime(2026, 6, 10, 1, 0, tzinfo=UTC))  # 10:00 Tokyo, 21:00 New York
    assert hits(rs, datetime(2026, 6, 10, 13, 30, tzinfo=UTC))  # 09:30 New York (EDT)
    assert not hits(rs, datetime(2026, 6, 10, 12, 30, tzinfo=UTC))  # 08:30 NY, 21:30 Tokyo
    # the same instant written in another offset is the same instant
    assert hits(rs, datetime(2026, 6, 10, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo")))


def test_dst_spring_forward_day() -> None:
    """2026-03-08 in Los Angeles: 02:00 PST jumps to 03:00 PDT."""
    office = one_rule('time: {hours: "08:00-17:00"}', head="timezone: America/Los_Angeles\n")
    # 15:30 UTC is 07:30 the day before (PST, -8) but 08:30 on the change day (PDT, -7)
    assert not hits(office, datetime(2026, 3, 7, 15, 30, tzinfo=UTC))
    assert hits(office, datetime(2026, 3, 8, 15, 30, tzinfo=UTC))
    # the local end still is 17:00: 00:00 UTC on the 9th is 17:00 PDT
    assert hits(office, datetime(2026, 3, 8, 23, 59, tzinfo=UTC))
    assert not hits(office, datetime(2026, 3, 9, 0, 0, tzinfo=UTC))
    # the skipped hour never happens
    skipped = one_rule(
        'time: {days: [sun], hours: "02:00-03:00"}', head="timezone: America/Los_Angeles\n"
    )
    t = datetime(2026, 3, 8, 9, 0, tzinfo=UTC)  # 01:00 PST
    assert not any(hits(skipped, t + timedelta(minutes=m)) for m in range(0, 180, 5))


def test_dst_fall_back_day_matches_the_repeated_hour_twice() -> None:
    """2026-11-01 in Los Angeles: 01:00-02:00 happens twice (PDT, then PST)."""
    rs = one_rule('time: {hours: "01:00-02:00"}', head="timezone: America/Los_Angeles\n")
    assert hits(rs, datetime(2026, 11, 1, 8, 30, tzinfo=UTC))  # 01:30 PDT
    assert hits(rs, datetime(2026, 11, 1, 9, 30, tzinfo=UTC))  # 01:30 PST
    assert not hits(rs, datetime(2026, 11, 1, 10, 30, tzinfo=UTC))  # 02:30 PST


def test_window_zone_overrides_the_file_zone() -> None:
    rs = one_rule(
        'time: {hours: "09:00-10:00", timezone: UTC}', head="timezone: America/Los_Angeles\n"
    )
    assert hits(rs, datetime(2026, 6, 10, 9, 30, tzinfo=UTC))
    assert not hits(rs, la(2026, 6, 10, 9, 30))


# ----------------------------------------------------------------------------- order


def order_rules() -> RuleSet:
    names = vector_names("routing/order")
    return parse_rules((n, load_vector(n).decode()) for n in names)


def test_first_match_wins_in_file_name_order() -> None:
    rs = order_rules()
    assert [r.name for r in rs.rules] == ["psap-a-all", "l3-stays", "rest"]
    # 10-psap-a.yaml is read first, so its rule beats the more specific one in 20-triage.yaml
    d = rs.match(CallDescription(trunk="psap-a", triage=3), NOON)
    assert d is not None and d.rule == "psap-a-all" and d.mode == "cold"
    assert d.source == "routing/order/10-psap-a.yaml:4"
    # its destination is defined in a later file
    assert [x.name for x in d.chain] == ["psap-a-partner"]
    assert str(d.chain[0].uri) == "sip:988@127.0.0.1:5094"
    d = rs.match(CallDescription(trunk="psap-b", triage=3), NOON)
    assert d is not None and d.rule == "l3-stays" and d.dispatcher_stays
    d = rs.match(CallDescription(trunk="psap-b", triage=2), NOON)
    assert d is not None and d.rule == "rest"
    assert rs.sources == tuple(vector_names("routing/order"))


def test_no_match_is_none() -> None:
    rs = one_rule("triage: 3")
    assert rs.match(CallDescription(triage=1), NOON) is None
    assert rs.explain(CallDescription(triage=1), NOON).decision is None


# ----------------------------------------------------------------------------- chains


CHAINS = """
destinations:
  primary:
    uri: sip:988@127.0.0.1:5090
  backup:
    uri: sip:988@127.0.0.1:5092;transport=tcp
    ring_timeout: 20
  secure:
    uri: sips:988@127.0.0.1:5093
rules:
  - name: chain
    match: {triage: 1}
    mode: cold
    chain:
      - primary
      - backup
      - name: inline
        uri: sip:988@127.0.0.1:5096
        transport: tcp
        ring_timeout: 7.5
      - uri: sip:988-anon@127.0.0.1:5098
    fallback:
      chain: [secure]
  - name: single
    mode: warm
    chain: primary
    fallback: return_to_dispatcher
"""


def test_destination_chain_in_order_with_defaults() -> None:
    d = rules(CHAINS).match(CallDescription(triage=1), NOON)
    assert d is not None
    assert [(x.label, str(x.uri), x.transport, x.ring_timeout) for x in d.chain] == [
        ("primary", "sip:988@127.0.0.1:5090", "udp", 15.0),
        ("backup", "sip:988@127.0.0.1:5092;transport=tcp", "tcp", 20.0),
        ("inline", "sip:988@127.0.0.1:5096", "tcp", 7.5),
        ("sip:988-anon@127.0.0.1:5098", "sip:988-anon@127.0.0.1:5098", "udp", 15.0),
    ]
    assert d.chain[3].name is None
    assert d.fallback.action == "chain"
    assert [(x.label, x.transport) for x in d.fallback.chain] == [("secure", "tls")]


def test_default_fallback_returns_the_caller_to_the_dispatcher() -> None:
    rs = rules(CHAINS)
    d = rs.match(CallDescription(), NOON)
    assert d is not None and d.rule == "single"
    assert d.fallback.action == "return_to_dispatcher" and d.fallback.chain == ()
    assert [x.label for x in d.chain] == ["primary"]
    # the shared destinations, for the prober and API destinations named directly
    assert sorted(rs.destinations) == ["backup", "primary", "secure"]
    assert rs.destinations["backup"].ring_timeout == 20.0


# ----------------------------------------------------------------------------- metadata policy


POLICY = """
destinations:
  plain:
    uri: sip:988@127.0.0.1:5090
  gis:
    uri: sip:988@127.0.0.1:5092
    metadata:
      share_location: true
      accept_multipart: true
  quiet:
    uri: sip:988@127.0.0.1:5094
    metadata:
      forward_uui: false
      x_header_allowlist: []
rules:
  - name: with-policy
    match: {triage: 1}
    mode: cold
    chain: [plain, gis]
    metadata:
      x_header_allowlist: [X-Incident-Priority, x-cad-id]
      forward_uui: false
  - name: agreeing
    match: {triage: 2}
    mode: warm
    chain: [gis]
    metadata:
      share_location: true
  - name: defaults
    mode: warm
    chain: [plain, quiet, gis]
"""


def test_metadata_defaults() -> None:
    d = rules(POLICY).match(CallDescription(), NOON)
    assert d is not None and d.rule == "defaults"
    assert d.metadata == MetadataPolicy()
    assert MetadataPolicy() == MetadataPolicy(
        share_location=False,
        forward_uui=True,
        x_header_allowlist=frozenset(),
        accept_multipart=False,
    )
    plain, quiet, gis = (x.metadata for x in d.chain)
    assert plain == MetadataPolicy()
    assert quiet == MetadataPolicy(forward_uui=False)
    assert gis == MetadataPolicy(share_location=True, accept_multipart=True)


def test_rule_policy_applies_to_every_destination_and_merges_with_their_own() -> None:
    d = rules(POLICY).match(CallDescription(triage=1), NOON)
    assert d is not None and d.rule == "with-policy"
    allow = frozenset({"x-incident-priority", "x-cad-id"})
    assert d.metadata == MetadataPolicy(forward_uui=False, x_header_allowlist=allow)
    plain, gis = (x.metadata for x in d.chain)
    assert plain == MetadataPolicy(forward_uui=False, x_header_allowlist=allow)
    assert gis == MetadataPolicy(
        share_location=True, forward_uui=False, x_header_allowlist=allow, accept_multipart=True
    )


def test_rule_and_destination_may_set_a_key_to_the_same_value() -> None:
    d = rules(POLICY).match(CallDescription(triage=2), NOON)
    assert d is not None and d.rule == "agreeing"
    assert d.chain[0].metadata == MetadataPolicy(share_location=True, accept_multipart=True)
    assert d.metadata == MetadataPolicy(share_location=True)


def test_conflicting_policy_values_are_rejected() -> None:
    conflicting = POLICY.replace(
        "    chain: [gis]\n    metadata:\n      share_location: true",
        "    chain: [gis]\n    metadata:\n      share_location: false",
    )
    assert conflicting != POLICY
    with pytest.raises(RulesError) as err:
        rules(conflicting)
    assert [str(p) for p in err.value.problems] == [
        "t.yaml:26: rule 'agreeing'.chain: metadata.share_location is false in the rule but "
        "true for destination 'gis' (t.yaml:5); set it in one place"
    ]


def test_x_header_allowlist_is_case_insensitive() -> None:
    policy = MetadataPolicy(x_header_allowlist=frozenset({"x-incident-priority"}))
    assert policy.allows_x_header("X-Incident-Priority")
    assert not policy.allows_x_header("X-Other")


# ----------------------------------------------------------------------------- unknown trunks


TRUNK_RULES = f"rules:\n  - name: a\n    match: {{trunk: psap-a}}\n    mode: cold\n{DEST}"


def test_trunks_given_restrict_match_trunk() -> None:
    assert rules(TRUNK_RULES, trunks=["psap-a", "psap-b"]).rules[0].name == "a"
    assert rules(TRUNK_RULES).rules[0].name == "a"  # not given: any name
    with pytest.raises(RulesError) as err:
        rules(TRUNK_RULES, trunks=())
    assert err.value.messages == [
        "t.yaml:3: rule 'a'.match.trunk: unknown trunk 'psap-a'; known: none configured"
    ]
    with pytest.raises(TypeError):
        rules(TRUNK_RULES, trunks="psap-a")


# ----------------------------------------------------------------------------- any call


EVERY_CONDITION = """
timezone: America/Los_Angeles
rules:
  - name: everything
    match:
      trunk: [psap-a]
      called: ["988", "+1988"]
      called_pattern: "(1|\\\\+1)?988"
      caller_prefix: "+1805"
      area_code: "805"
      triage: [1, 2]
      language: es
      time: [{days: [fri], hours: "22:00-06:00"}, {hours: "00:00-24:00", timezone: Asia/Tokyo}]
    mode: cold
    chain: [{uri: "sip:988@127.0.0.1:5090"}]
  - name: night
    match: {time: {hours: "22:00-07:00"}}
    mode: warm
    chain: [{uri: "sip:988@127.0.0.1:5092"}]
"""

_RULESETS = {
    "every-condition": rules(EVERY_CONDITION),
    "order": order_rules(),
    "examples": load_rules(Path(__file__).resolve().parents[2] / "routing_rules"),
}

_TEXT = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["psap-a", "988", "+1988", "+18055550123", "es-MX", "1988", "805"]),
)


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(sorted(_RULESETS)),
    trunk=_TEXT,
    called=_TEXT,
    caller=_TEXT,
    triage=st.one_of(st.none(), st.integers(), st.sampled_from([1, 2, 3])),
    language=_TEXT,
    now=st.datetimes(timezones=st.timezones()),
)
def test_any_call_matches_without_raising_and_explain_agrees(
    which: str,
    trunk: str | None,
    called: str | None,
    caller: str | None,
    triage: int | None,
    language: str | None,
    now: datetime,
) -> None:
    rs = _RULESETS[which]
    call = CallDescription(trunk, called, caller, triage, language)
    decision: Decision | None = rs.match(call, now)
    explanation = rs.explain(call, now)
    assert explanation.decision == decision
    assert explanation.text()
    assert explanation.as_dict()["decision"] is None or decision is not None
    if which == "examples":  # they end with a catch-all: every call gets a decision
        assert decision is not None
    if decision is not None:
        assert explanation.traces[-1].rule == decision.rule
    assert all(not t.matched for t in explanation.traces[:-1])
