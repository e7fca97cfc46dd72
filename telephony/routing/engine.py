"""Matching a call against an ordered :class:`RuleSet`, and explaining why.

The first rule whose every condition holds wins. Conditions are tested in a fixed order (trunk,
called, called_pattern, caller_prefix, area_code, triage, language, time) and a rule stops at its
first failing condition; :meth:`RuleSet.explain` records that condition for every rule before
the winner, and every condition of the winner, for ``handoffctl route --explain``.

Pure: no clock, no I/O. ``now`` is an argument and must be timezone-aware.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from telephony.routing.model import (
    CallDescription,
    Conditions,
    Decision,
    Destination,
    MetadataPolicy,
    Rule,
    is_dialable,
    nanp_area_code,
    normalize_number,
)
from telephony.routing.timewindow import local_time_text


@dataclass(frozen=True, slots=True)
class Check:
    """One tested condition: its key in the rule file, whether it held, and why in words."""

    condition: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule fared: the conditions tested, up to and including the first that failed."""

    rule: str
    source: str
    matched: bool
    checks: tuple[Check, ...]

    @property
    def failed(self) -> Check | None:
        """The condition that stopped this rule (``None`` when it matched)."""
        return None if self.matched else self.checks[-1]


# what a checker returns when asked for the outcome only (``why=False``: no reason text)
_HELD = Check("", True, "")
_FAILED = Check("", False, "")


def _fmt(values: tuple[str, ...] | tuple[int, ...]) -> str:
    """``"3"`` for one value, ``"one of 1, 2"`` for several."""
    if len(values) == 1:
        return str(values[0])
    return "one of " + ", ".join(str(v) for v in values)


def _check_trunk(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.trunks is not None
    if call.trunk is None:
        return Check("trunk", False, "the call has no trunk") if why else _FAILED
    ok = call.trunk in c.trunks
    if not why:
        return _HELD if ok else _FAILED
    verb = "is" if ok else "is not"
    return Check("trunk", ok, f"trunk {call.trunk!r} {verb} {_fmt(c.trunks)}")


def _check_called(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.called is not None
    if call.called is None:
        return Check("called", False, "the call has no called number") if why else _FAILED
    n = normalize_number(call.called)
    ok = n in c.called
    if not why:
        return _HELD if ok else _FAILED
    verb = "is" if ok else "is not"
    return Check("called", ok, f"called number {call.called!r} {verb} {_fmt(c.called)}")


def _check_called_pattern(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.called_patterns is not None
    if call.called is None:
        return Check("called_pattern", False, "the call has no called number") if why else _FAILED
    n = normalize_number(call.called)
    for p in c.called_patterns:
        if p.fullmatch(n):
            if not why:
                return _HELD
            return Check(
                "called_pattern", True, f"called number {call.called!r} matches {p.pattern}"
            )
    if not why:
        return _FAILED
    patterns = ", ".join(p.pattern for p in c.called_patterns)
    return Check(
        "called_pattern", False, f"called number {call.called!r} matches none of {patterns}"
    )


def _check_caller_prefix(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.caller_prefixes is not None
    if call.caller is None:
        return Check("caller_prefix", False, "the call has no caller number") if why else _FAILED
    n = normalize_number(call.caller)
    if is_dialable(n):
        for prefix in c.caller_prefixes:
            if n.startswith(prefix):
                if not why:
                    return _HELD
                return Check("caller_prefix", True, f"caller {call.caller!r} starts with {prefix}")
    if not why:
        return _FAILED
    prefixes = ", ".join(c.caller_prefixes)
    return Check("caller_prefix", False, f"caller {call.caller!r} starts with none of {prefixes}")


def _check_area_code(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.area_codes is not None
    if call.caller is None:
        return Check("area_code", False, "the call has no caller number") if why else _FAILED
    npa = nanp_area_code(call.caller)
    if npa is None:
        if not why:
            return _FAILED
        return Check("area_code", False, f"caller {call.caller!r} has no NANP area code")
    ok = npa in c.area_codes
    if not why:
        return _HELD if ok else _FAILED
    verb = "is" if ok else "is not"
    return Check("area_code", ok, f"caller area code {npa} {verb} {_fmt(c.area_codes)}")


def _check_triage(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.triage is not None
    if call.triage is None:
        return Check("triage", False, "the call has no triage level") if why else _FAILED
    ok = call.triage in c.triage
    if not why:
        return _HELD if ok else _FAILED
    verb = "is" if ok else "is not"
    return Check("triage", ok, f"triage level {call.triage} {verb} {_fmt(c.triage)}")


def language_matches(tag: str, wanted: str) -> bool:
    """RFC 4647 basic filtering: ``es`` matches ``es``, ``es-MX``, ``es-419`` (case-insensitive)."""
    t = tag.strip().lower()
    return t == wanted or t.startswith(wanted + "-")


def _check_language(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.languages is not None
    if call.language is None:
        return Check("language", False, "the call has no language") if why else _FAILED
    for wanted in c.languages:
        if language_matches(call.language, wanted):
            if not why:
                return _HELD
            return Check("language", True, f"language {call.language!r} matches {wanted}")
    if not why:
        return _FAILED
    wanted = ", ".join(c.languages)
    return Check("language", False, f"language {call.language!r} matches none of {wanted}")


def _check_time(c: Conditions, call: CallDescription, now: datetime, why: bool) -> Check:
    assert c.time is not None
    seen: list[str] = []
    for window in c.time:
        try:
            inside = window.contains(now)
            local = local_time_text(now, window.zone)  # may fail where contains did not
        except (OverflowError, ValueError):
            inside, local = False, f"{now.isoformat()} (out of range)"
        if inside:
            if not why:
                return _HELD
            return Check("time", True, f"{local} is within {window.describe()}")
        if why:
            seen.append(f"{local} is outside {window.describe()}")
    return Check("time", False, "; ".join(seen)) if why else _FAILED


_Checker = Callable[[Conditions, CallDescription, datetime, bool], Check]

# Field of Conditions -> its checker, in evaluation order.
_CHECKS: tuple[tuple[str, _Checker], ...] = (
    ("trunks", _check_trunk),
    ("called", _check_called),
    ("called_patterns", _check_called_pattern),
    ("caller_prefixes", _check_caller_prefix),
    ("area_codes", _check_area_code),
    ("triage", _check_triage),
    ("languages", _check_language),
    ("time", _check_time),
)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def trace_rule(rule: Rule, call: CallDescription, now: datetime) -> RuleTrace:
    """Test ``rule`` against ``call``, stopping at the first failing condition."""
    checks: list[Check] = []
    for attr, checker in _CHECKS:
        if getattr(rule.conditions, attr) is None:
            continue
        check = checker(rule.conditions, call, now, True)
        checks.append(check)
        if not check.matched:
            return RuleTrace(rule.name, rule.source, False, tuple(checks))
    if not checks:
        checks.append(Check("(none)", True, "the rule has no conditions: it matches every call"))
    return RuleTrace(rule.name, rule.source, True, tuple(checks))


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a call got the decision it got: every rule tried, in order, up to the winner."""

    call: CallDescription
    now: datetime
    traces: tuple[RuleTrace, ...]
    decision: Decision | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready structured form (for the API and ``--json``)."""
        return {
            "call": {
                "trunk": self.call.trunk,
                "called": self.call.called,
                "caller": self.call.caller,
                "triage": self.call.triage,
                "language": self.call.language,
            },
            "time": self.now.isoformat(),
            "rules": [
                {
                    "rule": t.rule,
                    "source": t.source,
                    "matched": t.matched,
                    "checks": [
                        {"condition": c.condition, "matched": c.matched, "reason": c.reason}
                        for c in t.checks
                    ],
                }
                for t in self.traces
            ],
            "decision": None if self.decision is None else decision_as_dict(self.decision),
        }

    def text(self) -> str:
        """A readable rendering for operators."""
        lines = [f"call: {self.call.describe()}", f"time: {self.now.isoformat()}", ""]
        for i, t in enumerate(self.traces, 1):
            if t.matched:
                lines.append(f"{i}. {t.rule} ({t.source}): MATCH")
                lines.extend(f"     - {c.condition}: {c.reason}" for c in t.checks)
            else:
                failed = t.checks[-1]
                lines.append(
                    f"{i}. {t.rule} ({t.source}): no - {failed.condition}: {failed.reason}"
                )
        lines.append("")
        d = self.decision
        if d is None:
            lines.append(
                "no rule matched: no routing decision (the caller stays with the dispatcher)"
            )
            return "\n".join(lines)
        lines.append(f"decision: rule {d.rule} ({d.source})")
        stays = " (dispatcher stays in the conference)" if d.dispatcher_stays else ""
        lines.append(f"  mode: {d.mode}{stays}")
        lines.append("  chain:")
        lines.extend(_describe_destination(n, x, d) for n, x in enumerate(d.chain, 1))
        lines.append(f"  if all fail: {d.fallback.describe()}")
        lines.append(f"  metadata: {d.metadata.describe()}")
        return "\n".join(lines)


def _describe_destination(n: int, dest: Destination, d: Decision) -> str:
    own = "" if dest.metadata == d.metadata else f"; metadata: {dest.metadata.describe()}"
    return f"    {n}. {dest.describe()}{own}"


def _policy_as_dict(m: MetadataPolicy) -> dict[str, Any]:
    return {
        "share_location": m.share_location,
        "forward_uui": m.forward_uui,
        "x_header_allowlist": sorted(m.x_header_allowlist),
        "accept_multipart": m.accept_multipart,
    }


def _destination_as_dict(d: Destination) -> dict[str, Any]:
    return {
        "name": d.name,
        "uri": str(d.uri),
        "transport": d.transport,
        "ring_timeout": d.ring_timeout,
        "metadata": _policy_as_dict(d.metadata),
    }


def decision_as_dict(d: Decision) -> dict[str, Any]:
    return {
        "rule": d.rule,
        "source": d.source,
        "mode": d.mode,
        "dispatcher_stays": d.dispatcher_stays,
        "chain": [_destination_as_dict(x) for x in d.chain],
        "fallback": {
            "action": d.fallback.action,
            "chain": [_destination_as_dict(x) for x in d.fallback.chain],
        },
        "metadata": _policy_as_dict(d.metadata),
    }


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An immutable, ordered set of rules loaded from ``sources`` (file names, in load order).

    ``destinations`` holds the shared, named destinations (with their own metadata policy only).
    """

    rules: tuple[Rule, ...]
    destinations: Mapping[str, Destination] = field(default_factory=lambda: MappingProxyType({}))
    sources: tuple[str, ...] = ()

    def match(self, call: CallDescription, now: datetime) -> Decision | None:
        """The decision of the first rule that matches ``call`` at ``now``, else ``None``.

        The same walk and the same checks as :meth:`explain`, so the two can never disagree;
        only the reasons are not written out (a transfer waits on this). Raises
        ``ValueError`` only for a naive ``now``; any call description is fine.
        """
        _require_aware(now)
        for rule in self.rules:
            conditions = rule.conditions
            for attr, checker in _CHECKS:
                tested = getattr(conditions, attr) is not None
                if tested and not checker(conditions, call, now, False).matched:
                    break
            else:
                return rule.decision
        return None

    def explain(self, call: CallDescription, now: datetime) -> Explanation:
        """Like :meth:`match`, with the reasons for every rule tried."""
        _require_aware(now)
        traces: list[RuleTrace] = []
        for rule in self.rules:
            trace = trace_rule(rule, call, now)
            traces.append(trace)
            if trace.matched:
                return Explanation(call, now, tuple(traces), rule.decision)
        return Explanation(call, now, tuple(traces), None)
