"""The daemon's configuration: the shipped example, every kind of bad file (tests/vectors/config/
bad-*.yaml, each listing its exact ``# expect:`` problems), the command-line overrides, API tokens
from the environment, trunk and position lookup, and ``handoffctl check-config``."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony import __version__
from telephony.cli import handoffctl_main
from telephony.config import (
    HTTP_KEYS,
    MEDIA_KEYS,
    POSITION_KEYS,
    PROBE_KEYS,
    RECORDS_KEYS,
    SIP_KEYS,
    SPOOL_KEYS,
    TOP_KEYS,
    TRUNK_KEYS,
    Config,
    ConfigError,
    Listen,
    check_config,
    load_config,
    main_check_config,
    with_overrides,
)
from telephony.config.model import DTMF_KEYS
from telephony.routing import load_rules
from telephony.sip.uri import parse_uri
from tests.vectors import VECTORS, load_vector, vector_names

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "handoffd.yaml"
DOCS = ROOT / "docs" / "configuration.md"
BAD = vector_names("config", "bad-*.yaml")
HERE = VECTORS / "config"
NO_ENV: dict[str, str] = {}


def expected(name: str) -> list[str]:
    """The ``# expect:`` lines of a vector (``{here}``: the vector directory's absolute path)."""
    text = load_vector(name).decode()
    return [
        line.removeprefix("# expect: ").replace("{here}", str(HERE))
        for line in text.splitlines()
        if line.startswith("# expect: ")
    ]


def write(tmp: Path, body: str, *, rules: str | None = "rules") -> Path:
    """A config file in ``tmp`` (plus a one-rule ``rules/`` directory unless ``rules`` is None)."""
    if rules is not None:
        (tmp / rules).mkdir(exist_ok=True)
        (tmp / rules / "90-default.yaml").write_text(
            "destinations:\n  d:\n    uri: sip:988@127.0.0.1:5090\n"
            "rules:\n  - name: all\n    mode: cold\n    chain: [d]\n"
        )
    path = tmp / "handoffd.yaml"
    path.write_text(body)
    return path


MINIMAL = """\
trunks:
  psap-a:
    allow: [127.0.0.1]
    psap_id: psap-a
rules: rules
"""


# ----------------------------------------------------------------------------- the example


def test_the_example_config_loads_as_documented() -> None:
    cfg = load_config(EXAMPLE, env=NO_ENV)
    assert cfg.source == EXAMPLE
    assert cfg.sip.listen == (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    assert cfg.sip.advertise is None
    assert (cfg.http.host, cfg.http.port, cfg.http.tokens_env) == (
        "127.0.0.1",
        8080,
        "HANDOFF_API_TOKENS",
    )
    assert cfg.http.tokens == frozenset()  # the dev token comes from the environment
    assert (cfg.media.host, cfg.media.port_min, cfg.media.port_max) == ("127.0.0.1", 20000, 20999)
    assert list(cfg.trunks) == ["psap-a"]
    trunk = cfg.trunks["psap-a"]
    assert trunk.allow == (ipaddress.ip_network("127.0.0.0/8"),)
    assert trunk.transfer_numbers == ("988",)
    assert list(cfg.positions) == ["disp-1", "disp-2"]
    assert cfg.positions["disp-1"].uri == parse_uri("sip:disp1@127.0.0.1:5070")
    assert cfg.positions["disp-1"].numbers == ("2001",)
    assert cfg.positions["disp-2"].uri == parse_uri("sip:disp2@127.0.0.1:5072")
    assert cfg.positions["disp-2"].numbers == ("2002",)
    assert cfg.rules == ROOT / "routing_rules"


def test_the_example_config_and_its_rules_check_clean() -> None:
    assert check_config(EXAMPLE, env=NO_ENV) == []
    cfg = load_config(EXAMPLE, env=NO_ENV)
    rules = load_rules(cfg.rules, trunks=cfg.trunks.keys())
    where = {d.uri.hostport for d in rules.destinations.values()}
    assert {"127.0.0.1:5090", "127.0.0.1:5092"} <= where  # primary and backup 988


def test_the_example_gives_the_dev_token_through_the_environment() -> None:
    cfg = load_config(EXAMPLE, env={"HANDOFF_API_TOKENS": "dev-token-change-me"})
    assert cfg.http.tokens == {"dev-token-change-me"}


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()
    for section, keys in (
        ("sip", SIP_KEYS),
        ("http", HTTP_KEYS),
        ("media", MEDIA_KEYS),
        ("trunks.NAME", TRUNK_KEYS),
        ("positions.NAME", POSITION_KEYS),
        ("probe", PROBE_KEYS),
        ("drain", ("timeout", "retry_after")),
        ("redis", ("url",)),
        ("records", tuple(k for k in RECORDS_KEYS if k != "spool")),
        ("records.spool", SPOOL_KEYS),
        ("logging", ("level", "phi")),
        ("dtmf", DTMF_KEYS),
    ):
        assert f"### `{section.split('.')[0]}`" in docs
        for key in keys:
            assert f"`{section}.{key}`" in docs, f"{section}.{key} is not in {DOCS.name}"
    for key in TOP_KEYS:
        assert f"`{key}" in docs
    for flag in ("--sip-listen", "--http-listen", "--redis-url", "HANDOFF_API_TOKENS"):
        assert flag in docs


# ----------------------------------------------------------------------------- bad files


def test_there_is_a_vector_for_every_kind_of_mistake() -> None:
    kinds = {Path(n).stem.removeprefix("bad-") for n in BAD}
    assert kinds >= {
        "yaml-syntax",
        "unknown-key",
        "wrong-types",
        "ports",
        "cidr",
        "uri",
        "duplicate-names",
        "empty-allow",
        "port-range-odd",
        "port-range-small",
        "position-collision",
        "rules-missing",
        "records",
        "dtmf",
        "dtmf-prefix",
    }


@pytest.mark.parametrize("name", BAD, ids=[Path(n).stem for n in BAD])
def test_bad_config_is_rejected_with_file_and_line(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = expected(name)
    assert want, f"{name} lists no '# expect:' line"
    monkeypatch.chdir(HERE)  # problems name the file as given: the bare file name
    with pytest.raises(ConfigError) as err:
        load_config(Path(name).name, env=NO_ENV)
    assert list(err.value.problems) == want
    assert str(err.value) == "\n".join(want)
    # check_config reports the same (the rules these vectors name are fine)
    assert check_config(Path(name).name, env=NO_ENV) == want


def test_numbers_stay_text_whether_quoted_or_not(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
trunks:
  psap-a:
    allow: 127.0.0.1
    psap_id: psap-a
    transfer_numbers: [988, "+1988", 0988]
positions:
  disp-1:
    uri: sip:disp1@127.0.0.1:5070
    numbers: 2001
  disp-2:
    uri: sip:disp2@127.0.0.1:5072
    numbers: ["*22", 0017]
rules: rules
""",
        ),
        env=NO_ENV,
    )
    assert cfg.trunks["psap-a"].transfer_numbers == ("988", "+1988", "0988")
    assert cfg.positions["disp-1"].numbers == ("2001",)
    assert cfg.positions["disp-2"].numbers == ("*22", "0017")


def test_a_yaml_octal_looking_number_is_not_a_number(tmp_path: Path) -> None:
    body = MINIMAL + "positions:\n  d:\n    uri: sip:d@127.0.0.1\n    numbers: [0x7d1]\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, body), env=NO_ENV)
    assert err.value.problems[0].endswith(
        ":9: positions.d.numbers[0]: '0x7d1' is not a number (digits, '+', '*', '#')"
    )


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert err.value.problems == (
        f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory",
    )
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"trunks: {}\n# caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config(latin1)
    assert err.value.problems[0].startswith(f"{latin1}: cannot read: 'utf-8' codec")


# ----------------------------------------------------------------------------- defaults


def test_a_minimal_config_takes_every_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the rules path is relative to the file, not to the cwd
    cfg = load_config(write(tmp_path, MINIMAL), env=NO_ENV)
    default = Config(source=cfg.source)
    assert cfg.sip == default.sip
    assert cfg.sip.listen == (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    assert cfg.sip.user_agent == f"handoffd/{__version__}"
    assert (cfg.http, cfg.media, cfg.probe) == (default.http, default.media, default.probe)
    assert (cfg.drain_timeout, cfg.retry_after) == (30.0, 30)
    assert (cfg.redis_url, cfg.log_level, cfg.log_phi) == (
        "redis://127.0.0.1:6379/0",
        "info",
        False,
    )
    assert cfg.rules == tmp_path / "rules"
    assert dict(cfg.positions) == {}
    trunk = cfg.trunks["psap-a"]
    assert trunk.allow == (ipaddress.ip_network("127.0.0.1/32"),)
    assert (trunk.transfer_numbers, trunk.triage_header) == (("988",), "X-Triage-Level")


def test_a_position_takes_its_transport_from_the_uri(tmp_path: Path) -> None:
    body = MINIMAL + (
        "positions:\n"
        "  a:\n    uri: sip:a@127.0.0.1:5070;transport=tcp\n"
        "  b:\n    uri: sip:b@127.0.0.1:5072\n    transport: tcp\n"
        "    accept_multipart: true\n    share_location: false\n"
        "  c:\n    uri: sip:c@[::1]:5074\n"
    )
    cfg = load_config(write(tmp_path, body), env=NO_ENV)
    a, b, c = cfg.positions["a"], cfg.positions["b"], cfg.positions["c"]
    assert (a.transport, b.transport, c.transport) == ("tcp", "tcp", "udp")
    assert (a.accept_multipart, a.share_location) == (False, True)
    assert (b.accept_multipart, b.share_location) == (True, False)


def test_the_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env=NO_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.redis_url = "redis://elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.trunks["psap-b"] = cfg.trunks["psap-a"]  # type: ignore[index]


def test_every_problem_of_every_section_is_reported_at_once(tmp_path: Path) -> None:
    body = """\
sip: {t1: 0}
http: {port: -1}
media: {latch: no}
trunks: {psap-a: {allow: [], psap_id: psap-a}}
positions: {d: {uri: "tel:1"}}
rules: missing
probe: {down_after: 0}
drain: {timeout: x}
redis: {url: "redis://"}
logging: {phi: 1}
"""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, body, rules=None), env=NO_ENV)
    lines = [int(p.split(":")[1]) for p in err.value.problems]
    assert lines == list(range(1, 11))


# ----------------------------------------------------------------------------- tokens


def test_api_tokens_are_the_union_of_the_file_and_the_environment(tmp_path: Path) -> None:
    body = MINIMAL + "http:\n  tokens: [file-token, 12345678]\n"
    path = write(tmp_path, body)
    env = {"HANDOFF_API_TOKENS": " env-a ,env-b,, "}
    cfg = load_config(path, env=env)
    assert cfg.http.tokens == {"file-token", "12345678", "env-a", "env-b"}
    assert load_config(path, env=NO_ENV).http.tokens == {"file-token", "12345678"}


def test_the_token_variable_is_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "http:\n  tokens_env: MY_TOKENS\n")
    env = {"MY_TOKENS": "mine", "HANDOFF_API_TOKENS": "not-read"}
    assert load_config(path, env=env).http.tokens == {"mine"}
    monkeypatch.setenv("MY_TOKENS", "from-os-environ")  # env=None: os.environ
    assert load_config(path).http.tokens == {"from-os-environ"}


def test_a_bad_token_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "http:\n  tokens_env: MY_TOKENS\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"MY_TOKENS": "good,has space"})
    assert err.value.problems == (
        f"{path}:7: environment variable MY_TOKENS: tokens are comma-separated visible ASCII "
        "without spaces",
    )


# ----------------------------------------------------------------------------- lookups


def test_trunk_for_is_the_first_trunk_whose_allow_list_holds_the_source(tmp_path: Path) -> None:
    body = """\
trunks:
  narrow:
    allow: [127.0.0.2/32]
    psap_id: narrow
  wide:
    allow: [127.0.0.0/8, "::1"]
    psap_id: wide
  later:
    allow: [127.0.0.2]
    psap_id: later
rules: rules
"""
    cfg = load_config(write(tmp_path, body), env=NO_ENV)

    def name(host: str) -> str | None:
        trunk = cfg.trunk_for(host)
        return None if trunk is None else trunk.name

    assert name("127.0.0.2") == "narrow"
    assert name("127.9.9.9") == "wide"
    assert name("::1") == "wide"
    assert name("[::1]") == "wide"
    assert name("::ffff:127.0.0.2") == "narrow"  # IPv4-mapped
    assert name("10.0.0.1") is None
    assert name("::2") is None
    assert name("localhost") is None  # only addresses, never names
    assert name("") is None


def test_position_for_finds_a_position_by_name_or_number() -> None:
    cfg = load_config(EXAMPLE, env=NO_ENV)
    one, two = cfg.positions["disp-1"], cfg.positions["disp-2"]
    assert cfg.position_for("disp-1") is one
    assert cfg.position_for("2001") is one
    assert cfg.position_for("2002") is two
    assert cfg.position_for("988") is None
    assert cfg.position_for("disp-3") is None
    assert cfg.position_for("") is None


# ----------------------------------------------------------------------------- overrides


def test_overrides_move_the_listen_addresses_and_keep_the_rest() -> None:
    cfg = load_config(EXAMPLE, env=NO_ENV)
    moved = with_overrides(
        cfg,
        sip_listen="127.0.0.2:5999",
        http_listen="[::1]:8181",
        redis_url="redis://127.0.0.1:6390/2",
    )
    assert moved.sip.listen == (Listen("udp", "127.0.0.2", 5999), Listen("tcp", "127.0.0.2", 5999))
    assert (moved.http.host, moved.http.port) == ("::1", 8181)
    assert moved.redis_url == "redis://127.0.0.1:6390/2"
    assert moved.sip.t1 == cfg.sip.t1 and moved.http.tokens == cfg.http.tokens
    assert moved.trunks == cfg.trunks and moved.positions == cfg.positions
    assert cfg.sip.listen[0].port == 5060  # the original is untouched
    assert with_overrides(cfg) == cfg
    v6 = with_overrides(cfg, sip_listen="[::1]:0")
    assert v6.sip.listen == (Listen("udp", "::1", 0), Listen("tcp", "::1", 0))


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (
            {"sip_listen": "5060"},
            "--sip-listen: '5060': not HOST:PORT (e.g. 127.0.0.1:5060 or [::1]:5060)",
        ),
        (
            {"sip_listen": "localhost:5060"},
            "--sip-listen: 'localhost:5060': 'localhost' is not an IP address",
        ),
        (
            {"sip_listen": "::1:5060"},
            "--sip-listen: '::1:5060': not HOST:PORT (e.g. 127.0.0.1:5060 or [::1]:5060)",
        ),
        (
            {"http_listen": "127.0.0.1:65536"},
            "--http-listen: '127.0.0.1:65536': port 65536 is out of range (0 to 65535)",
        ),
        (
            {"http_listen": "[127.0.0.1]:80"},
            "--http-listen: '[127.0.0.1]:80': '[127.0.0.1]' is not an IP address",
        ),
        (
            {"redis_url": "127.0.0.1:6379"},
            "--redis-url: '127.0.0.1:6379' is not a redis://, rediss:// or unix:// URL",
        ),
        (
            {"redis_url": "redis://:6379"},
            "--redis-url: 'redis://:6379' names no host (e.g. redis://127.0.0.1:6379/0)",
        ),
        (
            {"redis_url": "redis://127.0.0.1:port"},
            "--redis-url: 'redis://127.0.0.1:port' has a bad port",
        ),
    ],
)
def test_a_bad_override_names_its_flag(flags: dict[str, str], problem: str) -> None:
    cfg = load_config(EXAMPLE, env=NO_ENV)
    with pytest.raises(ConfigError) as err:
        with_overrides(cfg, **flags)
    assert err.value.problems == (problem,)


def test_a_wildcard_sip_listen_needs_an_advertised_host(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, env=NO_ENV)
    with pytest.raises(ConfigError) as err:
        with_overrides(cfg, sip_listen="0.0.0.0:5060", http_listen="nonsense")
    assert [p.split(":")[0] for p in err.value.problems] == ["--sip-listen", "--http-listen"]
    assert "set sip.advertise" in err.value.problems[0]
    path = write(tmp_path, MINIMAL + "sip:\n  advertise: 127.0.0.1\n")
    moved = with_overrides(load_config(path, env=NO_ENV), sip_listen="0.0.0.0:5060")
    assert moved.sip.listen[0].host == "0.0.0.0"
    assert moved.sip.advertise == "127.0.0.1"


# ----------------------------------------------------------------------------- check-config


def test_check_config_reports_the_rules_problems_too(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "media: {port_min: 3}\n")
    (tmp_path / "rules" / "50-bad.yaml").write_text(
        "rules:\n  - name: other-trunk\n    match: {trunk: psap-z}\n    mode: cold\n"
        "    chain: [d]\n"
    )
    problems = check_config(path, env=NO_ENV)
    assert problems[0] == f"{path}:6: media.port_min: 3 is out of range (1024 to 65535)"
    assert len(problems) == 2
    assert problems[1].startswith(f"{tmp_path / 'rules' / '50-bad.yaml'}:3: ")
    assert "psap-z" in problems[1]  # checked against the config's trunk names
    with pytest.raises(ConfigError):
        load_config(path, env=NO_ENV)


def test_main_check_config_says_ok_with_counts() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check_config([str(EXAMPLE)], stdout=out, stderr=err) == 0
    rules = len(load_rules(ROOT / "routing_rules").rules)
    assert out.getvalue() == f"{EXAMPLE}: OK (1 trunk, 2 positions, {rules} rules)\n"
    assert err.getvalue() == ""


def test_main_check_config_prints_every_problem_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    monkeypatch.delenv("HANDOFF_API_TOKENS", raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert main_check_config(["bad-values.yaml"], stdout=out, stderr=err) == 1
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == expected("config/bad-values.yaml")


@pytest.mark.parametrize("argv", [[], ["a.yaml", "b.yaml"], ["--frobnicate", "a.yaml"]])
def test_main_check_config_usage_errors_exit_2(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check_config(argv, stdout=out, stderr=err) == 2
    assert "usage: handoffctl check-config" in err.getvalue()


def test_main_check_config_help_and_missing_file(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check_config(["--help"], stdout=out, stderr=err) == 0
    assert "FILE" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main_check_config([str(tmp_path / "x.yaml")], stdout=out, stderr=err) == 1
    assert err.getvalue() == f"{tmp_path / 'x.yaml'}: cannot read: No such file or directory\n"


def test_handoffctl_check_config_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    assert handoffctl_main(["check-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith(f"{EXAMPLE}: OK (")


# ----------------------------------------------------------------------------- robustness

ODD_VALUES = [
    "",
    "null",
    "~",
    "[]",
    "{}",
    "-1",
    "0",
    "1.5",
    "1e9",
    "yes",
    "'x'",
    '"988"',
    "0988",
    "1:30",
    "[a, [b]]",
    "{a: 1}",
    "99999",
    "*nowhere",
    "&a [*a]",
    "!!binary aGk=",
    "!custom x",
    "|\n  x",
    "[127.0.0.1/33]",
    "sips:x@y",
    "udp:[::1]:5060",
    "\t",
    "'",
    "<<: {a: 1}",
    "é",
]


@settings(max_examples=150, deadline=None)
@given(line=st.integers(min_value=0), value=st.sampled_from(ODD_VALUES), whole=st.booleans())
def test_any_mutation_of_the_example_loads_or_is_reported(
    line: int, value: str, whole: bool
) -> None:
    lines = EXAMPLE.read_text().splitlines()
    i = line % len(lines)
    key, colon, _ = lines[i].partition(": ")
    lines[i] = f"{key}: {value}" if colon and not whole else value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "handoffd.yaml"
        path.write_text("\n".join(lines).replace("../routing_rules", str(ROOT / "routing_rules")))
        try:
            load_config(path, env=NO_ENV)
        except ConfigError as err:
            assert err.problems
            assert all(p.startswith(f"{path}") for p in err.problems)
