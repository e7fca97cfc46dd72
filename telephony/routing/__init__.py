"""Routing rules: ``routing_rules/*.yaml`` to an immutable :class:`RuleSet`, and
``RuleSet.match(call, now) -> Decision | None`` with :meth:`RuleSet.explain` saying why.

Pure: no sockets, no asyncio, no clock. The only I/O is :func:`load_rules` reading the rule files
it is given (and ``zoneinfo`` reading the time zone database). See docs/routing.md.
"""

from telephony.routing.engine import Check, Explanation, RuleSet, RuleTrace
from telephony.routing.loader import load_rules, parse_rules
from telephony.routing.model import (
    CallDescription,
    Conditions,
    Decision,
    Destination,
    Fallback,
    MetadataPolicy,
    Mode,
    Rule,
    Transport,
    language_from_accept_language,
)
from telephony.routing.timewindow import TimeWindow
from telephony.routing.yamlnodes import RuleProblem, RulesError

__all__ = [
    "CallDescription",
    "Check",
    "Conditions",
    "Decision",
    "Destination",
    "Explanation",
    "Fallback",
    "MetadataPolicy",
    "Mode",
    "Rule",
    "RuleProblem",
    "RuleSet",
    "RuleTrace",
    "RulesError",
    "TimeWindow",
    "Transport",
    "language_from_accept_language",
    "load_rules",
    "parse_rules",
]
