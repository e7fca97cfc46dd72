"""Rule files (``routing_rules/*.yaml``) to an immutable :class:`RuleSet`, or a :class:`RulesError`.

Files are read in file-name order; their rules form one ordered list (the first match wins), and
their ``destinations`` one namespace that every file's rules may reference. Validation is strict:
an unknown key, a wrong type, an invalid URI, time zone or time window, a duplicate name, an
unknown destination (or trunk, when the configured trunk names are given), a triage level outside
1..3, or a rule that can never match (it comes after a catch-all) is an error naming
``file:line``. Every problem in every file is reported at once.
See docs/routing.md for the file format.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

import yaml

from telephony.routing.destblock import (
    NAME,
    NAME_HINT,
    DestSpec,
    PartialPolicy,
    build_destination,
    merge_policy,
    parse_destination,
    parse_policy,
    resolve_policy,
)
from telephony.routing.engine import RuleSet
from telephony.routing.matchblock import parse_match
from telephony.routing.model import MODES, Decision, Destination, Fallback, Mode, Rule
from telephony.routing.timewindow import load_zone
from telephony.routing.yamlnodes import FileProblems, RuleProblem, RulesError, line_of

__all__ = ["RuleProblem", "RulesError", "load_rules", "parse_rules"]

FILE_KEYS = ("timezone", "destinations", "rules")
RULE_KEYS = (
    "name",
    "description",
    "match",
    "mode",
    "dispatcher_stays",
    "chain",
    "metadata",
    "fallback",
)
RULE_REQUIRED = ("name", "mode", "chain")
FALLBACK_KEYS = ("chain",)
RETURN_TO_DISPATCHER = "return_to_dispatcher"


@dataclass(frozen=True, slots=True)
class _PendingRule:
    problems: FileProblems
    node: yaml.Node
    zone: ZoneInfo | None


class _Builder:
    """Accumulates files, then builds the RuleSet (destinations first, so order does not matter)."""

    def __init__(self, trunks: frozenset[str] | None) -> None:
        self.trunks = trunks
        self.problems: list[RuleProblem] = []
        self.sources: list[str] = []
        self.destinations: dict[str, DestSpec] = {}
        self.broken: set[str] = set()  # shared destinations already reported as wrong
        self.pending: list[_PendingRule] = []

    # ------------------------------------------------------------------------------ files

    def add_file(self, name: str, text: str) -> None:
        self.sources.append(name)
        p = FileProblems(name, self.problems)
        root = p.compose(text)
        if root is None:
            return
        top = p.mapping(root, "rule file", FILE_KEYS)
        if top is None:
            return
        zone: ZoneInfo | None = None
        if "timezone" in top:
            zone = self._zone(p, top["timezone"][1], "timezone")
        if "destinations" in top:
            self._destinations(p, top["destinations"][1])
        if "rules" in top:
            items = p.items(top["rules"][1], "rules", allow_single=False)
            for item in items or ():
                self.pending.append(_PendingRule(p, item, zone))

    def _zone(self, p: FileProblems, node: yaml.Node, what: str) -> ZoneInfo | None:
        name = p.text(node, what)
        if name is None:
            return None
        try:
            return load_zone(name)
        except ValueError as exc:
            p.add(node, f"{what}: {exc}")
            return None

    def _destinations(self, p: FileProblems, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            p.add(node, "destinations must be a mapping of name: destination")
            return
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = p.text(key_node, "destination name")
            if name is None:
                continue
            if not NAME.match(name):
                p.add(key_node, f"destination name {name!r}: {NAME_HINT}")
                continue
            if name in seen:
                first = line_of(seen[name])
                p.add(key_node, f"duplicate destination {name!r} (first defined on line {first})")
                continue
            seen[name] = key_node
            if name in self.destinations:
                where = self.destinations[name].where
                p.add(key_node, f"duplicate destination {name!r} (first defined at {where})")
                continue
            spec = parse_destination(p, value_node, f"destination {name!r}", name, at=key_node)
            if spec is None:
                self.broken.add(name)
            else:
                self.destinations[name] = spec

    # ------------------------------------------------------------------------------ rules

    def finish(self) -> RuleSet:
        rules: list[Rule] = []
        names: dict[str, str] = {}
        catch_all: Rule | None = None
        for pending in self.pending:
            built = self._rule(pending, names)
            if built is None:
                continue
            if catch_all is not None:
                pending.problems.add(
                    pending.node,
                    f"rule {built.name!r} can never match: the catch-all rule "
                    f"{catch_all.name!r} ({catch_all.source}) comes before it",
                )
            elif built.conditions.is_catch_all:
                catch_all = built
            rules.append(built)
        if not rules and not self.problems:
            where = ", ".join(self.sources) or "(no files)"
            self.problems.append(RuleProblem(where, None, "no rules: nothing would route a call"))
        if self.problems:
            # Per file in load order, then by line (a file-wide problem first).
            order = {name: i for i, name in enumerate(self.sources)}
            raise RulesError(
                sorted(self.problems, key=lambda x: (order.get(x.file, -1), x.line or 0))
            )
        shared = {
            n: build_destination(spec, resolve_policy([spec.policy]))
            for n, spec in self.destinations.items()
        }
        return RuleSet(tuple(rules), MappingProxyType(shared), tuple(self.sources))

    def _rule(self, pending: _PendingRule, names: dict[str, str]) -> Rule | None:
        p, node = pending.problems, pending.node
        before = p.count()
        label = _peek_name(node)
        m = p.mapping(
            node, f"rule {label!r}" if label else "rule", RULE_KEYS, required=RULE_REQUIRED
        )
        if m is None:
            return None
        name = p.text(m["name"][1], "rule name") if "name" in m else None
        what = f"rule {name!r}" if name is not None else "rule"
        if name is not None:
            if not NAME.match(name):
                p.add(m["name"][1], f"rule name {name!r}: {NAME_HINT}")
            elif name in names:
                p.add(
                    m["name"][1], f"duplicate rule name {name!r} (first defined at {names[name]})"
                )
            else:
                names[name] = p.where(node)
        description = ""
        if "description" in m:
            description = p.text(m["description"][1], f"{what}.description") or ""
        match_node = m["match"][1] if "match" in m else None
        conditions = parse_match(p, match_node, f"{what}.match", pending.zone, self.trunks)
        mode: Mode | None = None
        if "mode" in m:
            text = p.text(m["mode"][1], f"{what}.mode")
            if text is not None and text in MODES:
                mode = text
            elif text is not None:
                p.add(m["mode"][1], f"{what}.mode: {text!r} is not cold, warm or consult")
        stays = False
        if "dispatcher_stays" in m:
            stays = bool(p.boolean(m["dispatcher_stays"][1], f"{what}.dispatcher_stays"))
            if stays and mode is not None and mode != "warm":
                p.add(
                    m["dispatcher_stays"][1],
                    f"{what}.dispatcher_stays: only a warm (conference) transfer can keep the "
                    f"dispatcher; mode is {mode}",
                )
        rule_policy = PartialPolicy()
        if "metadata" in m:
            rule_policy = parse_policy(p, m["metadata"][1], f"{what}.metadata") or rule_policy
        chain = self._chain(p, m["chain"][1], f"{what}.chain", rule_policy) if "chain" in m else ()
        fallback = Fallback()
        if "fallback" in m:
            fallback = self._fallback(p, m["fallback"][1], f"{what}.fallback", rule_policy)
        if p.count() > before or name is None or mode is None or conditions is None:
            return None
        source = p.where(node)
        decision = Decision(
            rule=name,
            source=source,
            mode=mode,
            chain=chain,
            dispatcher_stays=stays,
            metadata=resolve_policy([rule_policy]),
            fallback=fallback,
        )
        return Rule(name, source, conditions, decision, description)

    def _chain(
        self, p: FileProblems, node: yaml.Node, what: str, rule_policy: PartialPolicy
    ) -> tuple[Destination, ...]:
        if isinstance(node, yaml.SequenceNode) and not node.value:
            p.add(node, f"{what} is empty: name at least one destination")
            return ()
        items = p.items(node, what, allow_single=True)
        out: list[Destination] = []
        for item in items or ():
            spec: DestSpec | None
            if isinstance(item, yaml.ScalarNode):
                ref = p.text(item, what)
                if ref is None:
                    continue
                spec = self.destinations.get(ref)
                if spec is None:
                    if ref not in self.broken:
                        known = ", ".join(sorted(self.destinations)) or "none defined"
                        p.add(item, f"{what}: unknown destination {ref!r} (known: {known})")
                    continue
            else:
                spec = parse_destination(p, item, f"{what} entry", None, at=item)
                if spec is None:
                    continue
            policy = merge_policy(p, item, what, rule_policy, spec)
            if policy is not None:
                out.append(build_destination(spec, policy))
        return tuple(out)

    def _fallback(
        self, p: FileProblems, node: yaml.Node, what: str, rule_policy: PartialPolicy
    ) -> Fallback:
        if isinstance(node, yaml.ScalarNode):
            text = p.text(node, what)
            if text is not None and text != RETURN_TO_DISPATCHER:
                p.add(
                    node,
                    f"{what}: {text!r} is not a fallback (use return_to_dispatcher, or a mapping "
                    "with a chain)",
                )
            return Fallback()
        m = p.mapping(node, what, FALLBACK_KEYS, required=FALLBACK_KEYS)
        if m is None or "chain" not in m:
            return Fallback()
        chain = self._chain(p, m["chain"][1], f"{what}.chain", rule_policy)
        return Fallback("chain", chain) if chain else Fallback()


def _peek_name(node: yaml.Node) -> str | None:
    """A rule's name, if it has a plain one, to label problems found before it is checked."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value) or None
    return None


def parse_rules(
    sources: Iterable[tuple[str, str]], *, trunks: Collection[str] | None = None
) -> RuleSet:
    """Build a RuleSet from ``(file name, text)`` pairs, in the order given. Pure.

    ``trunks``, when given (the trunk names of the daemon's config), are the only names a rule's
    ``match.trunk`` may use; any other is reported as an unknown trunk.
    """
    if isinstance(trunks, str):
        raise TypeError("trunks must be a collection of trunk names, not one string")
    builder = _Builder(None if trunks is None else frozenset(trunks))
    for name, text in sources:
        builder.add_file(name, text)
    return builder.finish()


def rule_files(path: str | Path) -> list[Path]:
    """The ``*.yaml`` files of a directory in file-name order, or ``[path]`` for a file."""
    p = Path(path)
    if p.is_dir():
        return sorted((f for f in p.glob("*.yaml") if f.is_file()), key=lambda f: f.name)
    return [p]


def load_rules(
    path: str | Path | Sequence[str | Path], *, trunks: Collection[str] | None = None
) -> RuleSet:
    """Read and build the rules of a directory (its ``*.yaml`` files), a file, or a list of files.

    ``trunks``: see :func:`parse_rules`.

    Raises :class:`RulesError` listing every ``file:line: problem``; the caller keeps its old
    RuleSet in that case.
    """
    problems: list[RuleProblem] = []
    if isinstance(path, str | Path):
        paths = rule_files(path)
        if Path(path).is_dir():
            problems.extend(
                RuleProblem(str(f), None, "only *.yaml files are loaded: rename it or move it away")
                for f in sorted(Path(path).glob("*.yml"))
            )
    else:
        paths = [Path(x) for x in path]
    if not paths:
        raise RulesError([RuleProblem(str(path), None, "no *.yaml rule files found")])
    texts: list[tuple[str, str]] = []
    for f in paths:
        try:
            texts.append((str(f), f.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(RuleProblem(str(f), None, f"cannot read: {exc}"))
    if problems:
        raise RulesError(problems)
    return parse_rules(texts, trunks=trunks)
