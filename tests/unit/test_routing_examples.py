"""The shipped example rules (routing_rules/), the explanation (text and JSON) and
``handoffctl route --explain`` (telephony.routing.cli.main_explain): output and exit codes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from telephony.routing import CallDescription, Decision, RuleSet, load_rules, parse_rules
from telephony.routing.cli import main_explain
from tests.vectors import VECTORS, load_vector, vector_names

ROUTING_RULES = Path(__file__).resolve().parents[2] / "routing_rules"
LA = ZoneInfo("America/Los_Angeles")
DAY = datetime(2026, 6, 10, 12, 0, tzinfo=LA)  # Wednesday noon
NIGHT = datetime(2026, 6, 10, 23, 30, tzinfo=LA)  # Wednesday night (starts a sun-thu window)
FRIDAY_EVENING = datetime(2026, 6, 12, 21, 0, tzinfo=LA)  # in the fri/sat window only


@pytest.fixture(scope="module")
def examples() -> RuleSet:
    return load_rules(ROUTING_RULES)


def decide(rs: RuleSet, now: datetime = DAY, **call: object) -> Decision:
    d = rs.match(CallDescription(**call), now)  # type: ignore[arg-type]
    assert d is not None
    return d


def labels(d: Decision) -> list[str]:
    return [x.label for x in d.chain]


# ----------------------------------------------------------------------------- examples


def test_examples_load_in_file_name_order(examples: RuleSet) -> None:
    assert [Path(s).name for s in examples.sources] == [
        "00-destinations.yaml",
        "10-acute.yaml",
        "20-language.yaml",
        "30-night.yaml",
        "40-triage.yaml",
        "90-default.yaml",
    ]
    assert examples.rules[-1].name == "default-warm"
    assert examples.rules[-1].conditions.is_catch_all


def test_the_988_destinations_the_daemon_config_relies_on(examples: RuleSet) -> None:
    dests = examples.destinations
    assert str(dests["988-primary"].uri) == "sip:988@127.0.0.1:5090"
    assert str(dests["988-backup"].uri) == "sip:988@127.0.0.1:5092"
    for d in dests.values():
        assert d.uri.host == "127.0.0.1"
        assert not d.metadata.share_location  # 988 works without precise caller location


@pytest.mark.parametrize("now", [DAY, NIGHT, FRIDAY_EVENING], ids=["day", "night", "fri-eve"])
def test_level_1_is_a_cold_transfer_to_988(examples: RuleSet, now: datetime) -> None:
    d = decide(examples, now, triage=1)
    assert (d.rule, d.mode, d.dispatcher_stays) == ("l1-cold", "cold", False)
    assert labels(d) == ["988-primary", "988-backup"]


def test_level_2_is_warm_and_the_backup_goes_first_at_night(examples: RuleSet) -> None:
    d = decide(examples, DAY, triage=2)
    assert (d.rule, d.mode, d.dispatcher_stays) == ("l2-warm", "warm", False)
    assert labels(d) == ["988-primary", "988-backup-tcp"]
    assert d.chain[1].transport == "tcp"
    for now in (NIGHT, FRIDAY_EVENING):
        d = decide(examples, now, triage=2)
        assert (d.rule, d.mode, d.dispatcher_stays) == ("night-l2-backup-first", "warm", False)
        assert labels(d) == ["988-backup", "988-primary"]


@pytest.mark.parametrize("language", [None, "es", "en"])
@pytest.mark.parametrize("now", [DAY, NIGHT])
def test_level_3_is_a_warm_conference_the_dispatcher_stays_in(
    examples: RuleSet, now: datetime, language: str | None
) -> None:
    d = decide(examples, now, triage=3, language=language)
    assert (d.rule, d.mode, d.dispatcher_stays) == ("l3-acute-conference", "warm", True)
    assert labels(d) == ["988-primary", "988-backup"]
    assert d.fallback.action == "return_to_dispatcher"


def test_spanish_speakers_go_to_the_spanish_queue_keeping_the_triage_mode(
    examples: RuleSet,
) -> None:
    d = decide(examples, triage=1, language="es-MX")
    assert (d.rule, d.mode) == ("spanish-l1-cold", "cold")
    assert labels(d) == ["988-spanish", "988-primary"]
    d = decide(examples, NIGHT, triage=2, language="es")
    assert (d.rule, d.mode) == ("spanish-warm", "warm")
    assert labels(d) == ["988-spanish", "988-primary"]
    assert [x.label for x in d.fallback.chain] == ["988-backup"]


def test_a_call_without_triage_gets_the_default(examples: RuleSet) -> None:
    d = decide(examples, trunk="psap-a", called="988", caller="+18055550123")
    assert (d.rule, d.mode, d.dispatcher_stays) == ("default-warm", "warm", False)
    assert labels(d) == ["988-primary"]
    assert [x.label for x in d.fallback.chain] == ["988-backup"]


def test_example_rules_forward_the_incident_priority_header(examples: RuleSet) -> None:
    d = decide(examples, triage=1)
    assert all(x.metadata.allows_x_header("X-Incident-Priority") for x in d.chain)
    assert not decide(examples).metadata.allows_x_header("X-Incident-Priority")


# ----------------------------------------------------------------------------- explain


def order_rules() -> RuleSet:
    return parse_rules((n, load_vector(n).decode()) for n in vector_names("routing/order"))


def test_explain_text_names_each_rule_tried_and_why() -> None:
    call = CallDescription(trunk="psap-b", caller="+18055550123", triage=3, language="es")
    text = order_rules().explain(call, DAY).text()
    assert text == (
        "call: trunk=psap-b caller=+18055550123 triage=3 language=es\n"
        "time: 2026-06-10T12:00:00-07:00\n"
        "\n"
        "1. psap-a-all (routing/order/10-psap-a.yaml:4): no - trunk: trunk 'psap-b' is not psap-a\n"
        "2. l3-stays (routing/order/20-triage.yaml:2): MATCH\n"
        "     - triage: triage level 3 is 3\n"
        "\n"
        "decision: rule l3-stays (routing/order/20-triage.yaml:2)\n"
        "  mode: warm (dispatcher stays in the conference)\n"
        "  chain:\n"
        "    1. regional sip:988@127.0.0.1:5090 (udp, ring 15 s)\n"
        "  if all fail: return to dispatcher\n"
        "  metadata: share_location=false forward_uui=true accept_multipart=false x_headers=none"
    )


def test_explain_reasons_for_failed_conditions() -> None:
    rs = parse_rules(
        [
            (
                "r.yaml",
                "timezone: UTC\n"
                "rules:\n"
                "  - name: r\n"
                "    match:\n"
                "      caller_prefix: ['+1805', '+1820']\n"
                "      language: [es, pt]\n"
                "      area_code: '805'\n"
                "      time: {days: [mon], hours: '08:00-09:00'}\n"
                "    mode: warm\n"
                "    chain: [{uri: 'sip:988@127.0.0.1:5090'}]\n",
            )
        ]
    )

    def failed(**call: object) -> str:
        trace = rs.explain(CallDescription(**call), DAY).traces[0]  # type: ignore[arg-type]
        assert trace.failed is not None
        return f"{trace.failed.condition}: {trace.failed.reason}"

    assert failed() == "caller_prefix: the call has no caller number"
    assert (
        failed(caller="+1212") == "caller_prefix: caller '+1212' starts with none of +1805, +1820"
    )
    assert failed(caller="+1805") == "area_code: caller '+1805' has no NANP area code"
    assert failed(caller="+18055550123") == "language: the call has no language"
    assert failed(caller="+18055550123", language="en") == (
        "language: language 'en' matches none of es, pt"
    )
    assert failed(caller="+18055550123", language="es") == (
        "time: wed 19:00 UTC is outside mon 08:00-09:00 UTC"
    )


def test_explain_json_is_the_same_story() -> None:
    call = CallDescription(trunk="psap-a", triage=3)
    data = json.loads(json.dumps(order_rules().explain(call, DAY).as_dict()))
    assert data["call"] == {
        "trunk": "psap-a",
        "called": None,
        "caller": None,
        "triage": 3,
        "language": None,
    }
    assert data["time"] == "2026-06-10T12:00:00-07:00"
    assert data["rules"] == [
        {
            "rule": "psap-a-all",
            "source": "routing/order/10-psap-a.yaml:4",
            "matched": True,
            "checks": [
                {"condition": "trunk", "matched": True, "reason": "trunk 'psap-a' is psap-a"}
            ],
        }
    ]
    assert data["decision"] == {
        "rule": "psap-a-all",
        "source": "routing/order/10-psap-a.yaml:4",
        "mode": "cold",
        "dispatcher_stays": False,
        "chain": [
            {
                "name": "psap-a-partner",
                "uri": "sip:988@127.0.0.1:5094",
                "transport": "udp",
                "ring_timeout": 15.0,
                "metadata": {
                    "share_location": False,
                    "forward_uui": True,
                    "x_header_allowlist": [],
                    "accept_multipart": False,
                },
            }
        ],
        "fallback": {"action": "return_to_dispatcher", "chain": []},
        "metadata": {
            "share_location": False,
            "forward_uui": True,
            "x_header_allowlist": [],
            "accept_multipart": False,
        },
    }


# ----------------------------------------------------------------------------- the command


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main_explain(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_route_explain_match_exits_0() -> None:
    code, out, err = run(
        "--explain", "--rules", str(ROUTING_RULES), "--triage", "3",
        "--time", "2026-06-10T12:00:00-07:00",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(
        "call: triage=3\ntime: 2026-06-10T12:00:00-07:00\n\n1. l3-acute-conference ("
    )
    assert "decision: rule l3-acute-conference" in out
    assert "  mode: warm (dispatcher stays in the conference)\n" in out


def test_route_explain_accept_language_and_json() -> None:
    code, out, err = run(
        "--explain", "--rules", str(ROUTING_RULES), "--triage", "1",
        "--accept-language", "en;q=0.4, es-MX;q=0.9", "--time", "2026-06-10T19:00:00Z", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["call"]["language"] == "es-mx"
    assert data["time"] == "2026-06-10T19:00:00+00:00"
    assert data["decision"]["rule"] == "spanish-l1-cold"
    assert data["decision"]["mode"] == "cold"


def test_route_explain_without_time_uses_now() -> None:
    before = datetime.now(UTC)
    code, out, _ = run("--rules", str(ROUTING_RULES), "--json")
    assert code == 0
    assert before <= datetime.fromisoformat(json.loads(out)["time"]) <= datetime.now(UTC)


def test_route_explain_rules_a_directory_or_one_file() -> None:
    order = VECTORS / "routing" / "order"
    code, out, err = run("--rules", str(order), "--triage", "1")
    assert (code, err) == (0, "") and "decision: rule rest (" in out
    code, out, err = run("--rules", str(order / "20-triage.yaml"), "--triage", "1")
    assert code == 2 and "unknown destination 'regional'" in err  # defined in another file


def test_route_explain_no_rule_matches_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "only-l3.yaml"
    f.write_text(
        "rules:\n  - name: l3\n    match: {triage: 3}\n    mode: warm\n"
        "    chain: [{uri: 'sip:988@127.0.0.1:5090'}]\n"
    )
    code, out, err = run("--rules", str(f), "--triage", "1", "--time", "2026-06-10T19:00:00Z")
    assert (code, err) == (1, "")
    assert out.endswith(
        f"1. l3 ({f}:2): no - triage: triage level 1 is not 3\n\n"
        "no rule matched: no routing decision (the caller stays with the dispatcher)\n"
    )


def test_route_explain_bad_rules_exit_2(tmp_path: Path) -> None:
    (tmp_path / "50-bad.yaml").write_text(load_vector("routing/bad-regex.yaml").decode())
    code, out, err = run("--rules", str(tmp_path), "--triage", "1")
    assert (code, out) == (2, "")
    assert err == (
        "handoffctl: the routing rules are not valid:\n"
        f"{tmp_path}/50-bad.yaml:4: rule 'pattern'.match.called_pattern: '98(8' is not a valid "
        "regular expression (missing ), unterminated subpattern at position 2)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--triage", "4"], "'4' is not a triage level (1, 2 or 3)"),
        (["--time", "2026-06-10T12:00:00"], "needs a UTC offset"),
        (["--time", "noon"], "is not an ISO 8601 time"),
        (["--language", "es", "--accept-language", "es"], "not allowed with argument"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_route_explain_bad_arguments_exit_2(argv: list[str], message: str) -> None:
    code, out, err = run("--rules", str(ROUTING_RULES), *argv)
    assert (code, out) == (2, "")
    assert err.startswith("usage: handoffctl route") and message in err


def test_route_explain_help_exits_0() -> None:
    code, out, err = run("--help")
    assert (code, err) == (0, "")
    assert "--accept-language" in out
