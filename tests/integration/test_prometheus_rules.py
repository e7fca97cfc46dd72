"""The shipped Prometheus and Grafana configuration, checked with the real ``promtool``.

- config/prometheus/alerts.yml is valid (``promtool check rules``), its unit tests pass
  (``promtool test rules``), and every alert is tested both firing and not firing;
- config/prometheus/prometheus.yml is valid (``promtool check config``) and scrapes the HTTP
  address of the example daemon config;
- what ``GET /metrics`` serves passes ``promtool check metrics`` with no lint at all, and holds
  every metric docs/metrics.md promises;
- the Grafana dashboard is valid JSON of the expected shape, every query parses as PromQL, and
  every query (and alert) uses only metrics the daemon exposes; every exposed metric is shown.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from telephony.metrics import Metrics
from telephony.recording.events import PHASES, RecordEvent
from tests.peers.prometheus import (
    DASHBOARD,
    ROOT,
    dashboard,
    expand,
    panel_queries,
    panels,
    prometheus_binary,
    variable_defaults,
)

PROMETHEUS = ROOT / "config" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
EXAMPLE = PROMETHEUS / "prometheus.yml"
GRAFANA = ROOT / "config" / "grafana"

#: the families docs/metrics.md documents, as Prometheus names them after a scrape
FAMILIES = {
    "handoff_transfers_total": "counter",
    "handoff_transfer_answer_seconds": "histogram",
    "handoff_transfer_handoff_seconds": "histogram",
    "handoff_transfer_abandoned_total": "counter",
    "handoff_calls_offered_total": "counter",
    "handoff_transfers_requested_total": "counter",
    "handoff_answer_interval_seconds": "gauge",
    "handoff_active_calls": "gauge",
    "handoff_active_transfers": "gauge",
    "handoff_trunk_up": "gauge",
    "handoff_redis_up": "gauge",
    "handoff_spool_events": "gauge",
    "handoff_spool_dropped_total": "counter",
    "handoff_sip_messages_total": "counter",
    "handoff_rtp_packets_total": "counter",
    "handoff_registered_contacts": "gauge",
    "handoff_rules_reload_total": "counter",
    "handoff_build_info": "gauge",
}

#: PromQL functions and aggregations (followed by "("), and words that are not metric names
FUNCTIONS = frozenset(
    {
        *("abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil"),
        *("changes", "clamp", "clamp_max", "clamp_min", "count", "count_over_time"),
        *("count_values", "day_of_month", "day_of_week", "delta", "deriv", "exp", "floor"),
        *("group", "histogram_quantile", "holt_winters", "idelta", "increase", "irate"),
        *("label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "max"),
        *("max_over_time", "min", "min_over_time", "predict_linear", "quantile"),
        *("quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort"),
        *("sort_desc", "sqrt", "stddev", "stdvar", "sum", "sum_over_time", "time"),
        *("timestamp", "topk", "vector"),
    }
)
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"})
_MODIFIERS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges and
    modifier label lists removed; the words left that are not calls are metric names)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _MODIFIERS.sub("", text)
    names: set[str] = set()
    for m in _WORD.finditer(text):
        word = m.group()
        if word in KEYWORDS:
            continue
        if text[m.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        names.add(word)
    return names


def _promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_binary("promtool"), *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


class _Sources:
    """The scrape-time numbers of a daemon with one call up, one destination down, spooling."""

    def active_calls(self) -> int:
        return 1

    def active_transfers(self) -> int:
        return 1

    def trunk_up(self) -> dict[str, bool]:
        return {"988-primary": True, "988-backup": False}

    def redis_up(self) -> bool:
        return False

    def spool_events(self) -> int:
        return 12

    def spool_dropped(self) -> int:
        return 0

    def sip_messages(self) -> dict[tuple[str, str], int]:
        return {("in", "INVITE"): 4, ("out", "INVITE"): 3, ("out", "2xx"): 4, ("in", "4xx"): 1}

    def rtp_packets(self) -> dict[str, int]:
        return {"in": 500, "out": 498}

    def registered_contacts(self) -> dict[tuple[str, str], int]:
        return {("disp-3", "reachable"): 1, ("disp-3", "unreachable"): 0}


def _event(kind: str, at_ms: int, **fields: Any) -> RecordEvent:
    base: dict[str, Any] = {"id": f"e-{kind}-{at_ms}", "kind": kind, "at_ms": at_ms}
    base |= {"call_id": "c1", "psap": "psap-a", "trunk": "psap-a"}
    return RecordEvent(**(base | fields))


def _rendered() -> str:
    """What GET /metrics serves after a completed, a failed, an abandoned and a cancelled
    transfer, a rule reload of each result, with the label sets prepared at startup."""
    m = Metrics(_Sources(), version="0.1.0", answer_interval=45)
    m.prepare(psaps=["psap-a"], destinations=["988-primary", "988-backup"])
    t0 = 1_700_000_000_000
    for i, (outcome, dest, phase) in enumerate(
        [
            ("completed", "988-primary", None),
            ("failed", "988-backup", None),
            ("abandoned", "988-primary", "while ringing"),
            ("cancelled", "988-primary", None),
        ]
    ):
        tr = {"transfer_id": f"t{i}", "mode": "cold", "transfer_requested_ms": t0}
        m.observe(_event("call_offered", t0 - 5000))
        m.observe(_event("transfer_requested", t0, **tr, destination="988-primary"))
        if outcome == "completed":
            m.observe(_event("destination_answered", t0 + 12_000, **tr, destination=dest))
        m.observe(_event(outcome, t0 + 12_000, **tr, destination=dest, phase=phase))
    m.rules_reloaded(ok=True)
    m.rules_reloaded(ok=False)
    return m.render().decode()


def test_alert_rules_are_valid() -> None:
    res = _promtool("check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr
    alerts = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert f"SUCCESS: {len(alerts)} rules found" in res.stdout, res.stdout
    assert "WARNING" not in res.stdout + res.stderr


def test_alert_rules_unit_tests_pass() -> None:
    res = _promtool("test", "rules", str(ALERTS_TEST))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "FAILED" not in res.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {
        "Handoff988DestinationDown",
        "HandoffAbandonmentSpike",
        "HandoffSpoolGrowing",
        "HandoffSpoolDroppingEvents",
        "HandoffRedisDown",
        "HandoffAnswerTimeOverInterval",
    } <= alerts
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == alerts, f"never tested firing: {alerts - firing}"
    assert quiet == alerts, f"never tested not firing: {alerts - quiet}"


def test_alerts_use_only_exposed_metrics() -> None:
    exposed = _exposed_names()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used, rule["alert"]
            # up: Prometheus's own, one per target
            assert used <= exposed | {"up"}, (rule["alert"], used - exposed)


def test_example_prometheus_config_is_valid_and_scrapes_the_example_daemon() -> None:
    res = _promtool("check", "config", str(EXAMPLE))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout
    daemon = yaml.safe_load((ROOT / "config" / "handoffd.yaml").read_text())
    config = yaml.safe_load(EXAMPLE.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "handoffd"  # alerts.yml's HandoffdDown selects this job
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"{daemon['http']['host']}:{daemon['http']['port']}"]


def test_metrics_pass_promtool_lint_with_no_output() -> None:
    text = _rendered()
    res = _promtool("check", "metrics", stdin=text.encode())
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_metrics_expose_every_documented_family_with_the_events_counted() -> None:
    families = {f.name: f for f in text_string_to_metric_families(_rendered())}
    for name, kind in FAMILIES.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in families, name
        assert families[base].type == kind, (name, families[base].type)

    def sample(name: str, **labels: str) -> float:
        for f in families.values():
            for s in f.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise AssertionError(f"no sample {name}{labels}")

    transfers = "handoff_transfers_total"
    assert sample(transfers, destination="988-primary", outcome="completed") == 1
    assert sample(transfers, destination="988-backup", outcome="failed") == 1
    assert sample(transfers, destination="988-primary", outcome="abandoned") == 1
    assert sample(transfers, destination="988-primary", outcome="cancelled") == 1
    # prepared at 0, so the first event of each kind shows in rate() and increase()
    assert sample(transfers, mode="warm", destination="988-backup", outcome="completed") == 0
    for phase in PHASES:
        want = 1 if phase == "while ringing" else 0
        assert sample("handoff_transfer_abandoned_total", mode="cold", phase=phase) == want
    assert sample("handoff_calls_offered_total", psap="psap-a") == 4
    assert sample("handoff_transfers_requested_total", mode="cold", psap="psap-a") == 4
    assert sample("handoff_transfers_requested_total", mode="consult", psap="psap-a") == 0
    # the configured interval is a bucket bound: the answer (12 s) is within 45 s, exactly
    answer = "handoff_transfer_answer_seconds_bucket"
    assert sample(answer, destination="988-primary", le="45.0") == 1
    assert sample(answer, destination="988-primary", le="10.0") == 0
    assert sample("handoff_answer_interval_seconds") == 45
    assert sample("handoff_transfer_handoff_seconds_count", mode="cold") == 1
    assert sample("handoff_trunk_up", trunk="988-backup") == 0
    assert sample("handoff_spool_events") == 12 and sample("handoff_redis_up") == 0
    assert sample("handoff_rules_reload_total", result="error") == 1
    assert sample("handoff_sip_messages_total", direction="in", kind="INVITE") == 4
    assert sample("handoff_rtp_packets_total", direction="out") == 498
    assert sample("handoff_build_info", version="0.1.0") == 1


def _exposed_names() -> set[str]:
    return {s.name for f in text_string_to_metric_families(_rendered()) for s in f.samples}


# -- the Grafana dashboard ---------------------------------------------------------------------


def test_dashboard_is_valid_json_with_a_prometheus_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 39
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_queries_use_only_exposed_metrics_and_show_every_one() -> None:
    exposed = _exposed_names()
    used: set[str] = set()
    dash = dashboard()
    for q in panel_queries(dash):
        names = metric_names(q.expr)
        assert names, (q.panel, q.expr)
        assert names <= exposed, (q.panel, q.ref, names - exposed)
        used |= names
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), *\w+\)", v["definition"])
            assert m is not None and m[1] in exposed, v["definition"]
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert set(FAMILIES) <= shown, f"not on the dashboard: {set(FAMILIES) - shown}"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Every query, with the variables Grafana substitutes, goes through promtool's parser
    (as recording rules; the rule names are irrelevant)."""
    dash = dashboard()
    values = variable_defaults(dash)
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": expand(q.expr, values)}
        for i, q in enumerate(panel_queries(dash))
    ]
    for r in rules:
        assert "$" not in r["expr"].replace("$1", ""), r["expr"]  # every variable substituted
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = _promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    default = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert default["current"]["value"] == source["uid"]
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "handoff.yml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    assert ds["apiVersion"] == boards["apiVersion"] == 1


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y"}[5m]))', {"a_bucket"}),
        ('label_replace(count_values without () ("le", b), "le", "$1.0", "le", "(1)")', {"b"}),
        ("c > on (instance) group_left () d", {"c", "d"}),
        ("60 * sum(increase(e_total[1h] offset 5m)) / 1e3", {"e_total"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
