"""The metrics count what the record events say, with the issue's names and no per-call labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from telephony.metrics import Metrics
from telephony.recording.events import RecordEvent

T0 = 1_790_000_000_000


@dataclass
class Sources:
    """Live values as the daemon's observer would give them at scrape time."""

    calls: int = 0
    transfers: int = 0
    trunks: dict[str, bool] = field(default_factory=dict)
    redis: bool = True
    spooled: int = 0
    dropped: int = 0
    sip: dict[tuple[str, str], int] = field(default_factory=dict)
    rtp: dict[str, int] = field(default_factory=dict)
    registered: dict[tuple[str, str], int] = field(default_factory=dict)

    def active_calls(self) -> int:
        return self.calls

    def active_transfers(self) -> int:
        return self.transfers

    def trunk_up(self) -> Mapping[str, bool]:
        return self.trunks

    def redis_up(self) -> bool:
        return self.redis

    def spool_events(self) -> int:
        return self.spooled

    def spool_dropped(self) -> int:
        return self.dropped

    def sip_messages(self) -> Mapping[tuple[str, str], int]:
        return self.sip

    def rtp_packets(self) -> Mapping[str, int]:
        return self.rtp

    def registered_contacts(self) -> Mapping[tuple[str, str], int]:
        return self.registered


def ev(kind: Any, after_ms: int, **kw: Any) -> RecordEvent:
    base: dict[str, Any] = {"call_id": "c1", "psap": "psap-a", "trunk": "cpe"}
    if kind not in ("call_offered", "answered_by_dispatcher"):
        base |= {"transfer_id": "t1", "mode": "cold", "transfer_requested_ms": T0}
    return RecordEvent(id=f"e{after_ms}", kind=kind, at_ms=T0 + after_ms, **(base | kw))


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[name, frozenset(labels.items())]


def test_a_completed_transfer_counts_its_answer_and_handoff_times() -> None:
    m = Metrics(Sources(), version="1.2.3", answer_interval=10)
    m.observe(ev("call_offered", -5000))
    m.observe(ev("transfer_requested", 0, destination="988-primary"))
    m.observe(ev("destination_answered", 8000, destination="988-primary"))
    m.observe(ev("completed", 8500, destination="988-primary"))
    assert value(m, "handoff_calls_offered_total", psap="psap-a") == 1
    assert value(m, "handoff_transfers_requested_total", mode="cold", psap="psap-a") == 1
    done = {"mode": "cold", "destination": "988-primary", "outcome": "completed"}
    assert value(m, "handoff_transfers_total", **done) == 1
    answer = {"mode": "cold", "destination": "988-primary"}
    assert value(m, "handoff_transfer_answer_seconds_sum", **answer) == 8.0
    assert value(m, "handoff_transfer_answer_seconds_bucket", le="7.5", **answer) == 0
    # the configured interval is a bucket bound of its own: within-interval share is exact
    assert value(m, "handoff_transfer_answer_seconds_bucket", le="10.0", **answer) == 1
    assert value(m, "handoff_transfer_handoff_seconds_sum", mode="cold") == 8.5
    assert value(m, "handoff_answer_interval_seconds") == 10
    info = samples(m)
    assert any(n == "handoff_build_info" and ("version", "1.2.3") in lab for n, lab in info)


def test_failed_cancelled_and_abandoned_transfers_by_outcome_and_phase() -> None:
    m = Metrics(Sources(), version="x", answer_interval=60)
    m.observe(ev("failover", 15000, destination="988-primary", sip_status=486))
    m.observe(ev("failed", 16000, destination="988-backup", sip_status=503))
    m.observe(ev("cancelled", 2000, transfer_id="t2", destination="988-primary"))
    m.observe(
        ev("abandoned", 3000, transfer_id="t3", destination="988-primary", phase="while ringing")
    )
    m.observe(ev("abandoned", 1000, transfer_id=None, mode=None))  # no transfer: not counted
    t = "handoff_transfers_total"
    assert value(m, t, mode="cold", destination="988-backup", outcome="failed") == 1
    assert value(m, t, mode="cold", destination="988-primary", outcome="cancelled") == 1
    assert value(m, t, mode="cold", destination="988-primary", outcome="abandoned") == 1
    assert value(m, "handoff_transfer_abandoned_total", mode="cold", phase="while ringing") == 1
    names = {n for n, _ in samples(m)}
    assert "handoff_transfer_answer_seconds_count" not in names  # nothing was answered
    assert not any(
        n == t and ("outcome", "failed") in lab and ("destination", "988-primary") in lab
        for n, lab in samples(m)
    ), "a failover is not a failed transfer"


def test_live_values_are_read_when_scraped() -> None:
    src = Sources(
        calls=3,
        transfers=1,
        trunks={"988-primary": True, "988-backup": False},
        redis=False,
        spooled=42,
        dropped=2,
        sip={("in", "INVITE"): 5, ("out", "2xx"): 4},
        rtp={"in": 1000, "out": 990},
    )
    m = Metrics(src, version="x", answer_interval=60)
    assert value(m, "handoff_active_calls") == 3
    assert value(m, "handoff_active_transfers") == 1
    assert value(m, "handoff_trunk_up", trunk="988-primary") == 1
    assert value(m, "handoff_trunk_up", trunk="988-backup") == 0
    assert value(m, "handoff_redis_up") == 0
    assert value(m, "handoff_spool_events") == 42
    assert value(m, "handoff_spool_dropped_total") == 2
    assert value(m, "handoff_sip_messages_total", direction="in", kind="INVITE") == 5
    assert value(m, "handoff_rtp_packets_total", direction="out") == 990
    src.calls, src.redis = 0, True
    assert value(m, "handoff_active_calls") == 0 and value(m, "handoff_redis_up") == 1


def test_rule_reloads_by_result_start_at_zero() -> None:
    m = Metrics(Sources(), version="x", answer_interval=60)
    assert value(m, "handoff_rules_reload_total", result="error") == 0
    m.rules_reloaded(ok=True)
    m.rules_reloaded(ok=False)
    m.rules_reloaded(ok=False)
    assert value(m, "handoff_rules_reload_total", result="ok") == 1
    assert value(m, "handoff_rules_reload_total", result="error") == 2


def test_two_instances_do_not_share_a_registry() -> None:
    a = Metrics(Sources(), version="x", answer_interval=60)
    b = Metrics(Sources(), version="x", answer_interval=60)
    a.rules_reloaded(ok=True)
    assert value(b, "handoff_rules_reload_total", result="ok") == 0


def test_registered_contacts_by_position_and_reachability() -> None:
    src = Sources(registered={("disp-3", "reachable"): 2, ("disp-3", "unreachable"): 0})
    m = Metrics(src, version="x", answer_interval=60)
    g = "handoff_registered_contacts"
    assert value(m, g, position="disp-3", state="reachable") == 2
    assert value(m, g, position="disp-3", state="unreachable") == 0
    src.registered = {("disp-3", "reachable"): 1, ("disp-3", "unreachable"): 1}
    assert value(m, g, position="disp-3", state="unreachable") == 1  # read at each scrape
