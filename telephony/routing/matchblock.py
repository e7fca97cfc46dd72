"""Validating a rule's ``match`` block into :class:`Conditions` (part of the loader).

Each key takes one value or a list (any listed value may match). Values are checked and
normalized here so the matcher never has to: numbers lose their visual separators, patterns are
compiled, languages are lower-cased, time windows get their zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar
from zoneinfo import ZoneInfo

import yaml

from telephony.routing.model import TRIAGE_LEVELS, Conditions, normalize_number
from telephony.routing.timewindow import ALL_DAYS, TimeWindow, load_zone, parse_days, parse_hours
from telephony.routing.yamlnodes import FileProblems

MATCH_KEYS = (
    "trunk",
    "called",
    "called_pattern",
    "caller_prefix",
    "area_code",
    "triage",
    "language",
    "time",
)
WINDOW_KEYS = ("days", "hours", "timezone")
_TRUNK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*\Z")
_NUMBER = re.compile(r"\+?[0-9*#]+\Z")
_AREA_CODE = re.compile(r"[2-9][0-9]{2}\Z")
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*\Z")

T = TypeVar("T")
_Convert = Callable[[yaml.Node, str], T | None]


def _each(
    p: FileProblems,
    node: yaml.Node,
    what: str,
    convert: Callable[[yaml.Node, str], T | None],
) -> tuple[T, ...] | None:
    """Convert one value or a list; ``None`` (after reporting) if any item is bad."""
    items = p.items(node, what, allow_single=True)
    if items is None:
        return None
    out: list[T] = []
    ok = True
    for item in items:
        value = convert(item, what)
        if value is None:
            ok = False
        else:
            out.append(value)
    return tuple(out) if ok else None


def parse_match(
    p: FileProblems,
    node: yaml.Node | None,
    what: str,
    file_zone: ZoneInfo | None,
    known_trunks: frozenset[str] | None = None,
) -> Conditions | None:
    """The conditions of a ``match`` block; no block (``None``) is a catch-all.

    ``known_trunks`` (the trunk names of the daemon's config), when given, is what ``trunk`` may
    name. Returns ``None`` after reporting when anything in the block is wrong.
    """
    if node is None:
        return Conditions()
    before = p.count()
    m = p.mapping(node, what, MATCH_KEYS)
    if m is None:
        return None
    if not m:
        if p.count() == before:
            p.add(node, f"{what} is empty: leave the key out for a catch-all rule")
        return None

    def values(key: str, convert: Callable[[yaml.Node, str], T | None]) -> tuple[T, ...] | None:
        return _each(p, m[key][1], f"{what}.{key}", convert) if key in m else None

    def windows() -> tuple[TimeWindow, ...] | None:
        node = m["time"][1] if "time" in m else None
        if isinstance(node, yaml.MappingNode):  # one window written without a list
            one = _window(p, node, f"{what}.time", file_zone)
            return None if one is None else (one,)
        return values("time", window)

    def text(pattern: re.Pattern[str], example: str, number: bool = False) -> _Convert[str]:
        def convert(item: yaml.Node, where: str) -> str | None:
            value = p.text(item, where)
            if value is None:
                return None
            value = normalize_number(value.strip()) if number else value.strip()
            if not pattern.match(value):
                p.add(item, f"{where}: {value!r} is not {example}")
                return None
            return value

        return convert

    def pattern(item: yaml.Node, where: str) -> re.Pattern[str] | None:
        value = p.text(item, where)
        if value is None:
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            p.add(item, f"{where}: {value!r} is not a valid regular expression ({exc})")
            return None

    def triage(item: yaml.Node, where: str) -> int | None:
        level = p.integer(item, where)
        if level is not None and level not in TRIAGE_LEVELS:
            p.add(item, f"{where}: {level} is not a triage level (1, 2 or 3)")
            return None
        return level

    def window(item: yaml.Node, where: str) -> TimeWindow | None:
        return _window(p, item, where, file_zone)

    trunk_name = text(_TRUNK, "a trunk name (letters, digits, '-', '_', '.', ':')")

    def trunk(item: yaml.Node, where: str) -> str | None:
        value = trunk_name(item, where)
        if value is not None and known_trunks is not None and value not in known_trunks:
            known = ", ".join(sorted(known_trunks)) or "none configured"
            p.add(item, f"{where}: unknown trunk {value!r}; known: {known}")
            return None
        return value

    languages = values("language", text(_LANGUAGE, "a language tag (e.g. es or es-MX)"))
    c = Conditions(
        trunks=values("trunk", trunk),
        called=values("called", text(_NUMBER, "a number (digits, +, *, #)", number=True)),
        called_patterns=values("called_pattern", pattern),
        caller_prefixes=values(
            "caller_prefix", text(_NUMBER, "a number prefix (e.g. +1805)", number=True)
        ),
        area_codes=values("area_code", text(_AREA_CODE, "a 3-digit NANP area code (e.g. 805)")),
        triage=values("triage", triage),
        languages=None if languages is None else tuple(x.lower() for x in languages),
        time=windows(),
    )
    return c if p.count() == before else None


def _window(
    p: FileProblems, node: yaml.Node, what: str, file_zone: ZoneInfo | None
) -> TimeWindow | None:
    m = p.mapping(node, f"{what} window", WINDOW_KEYS)
    if m is None:
        return None
    if "days" not in m and "hours" not in m:
        p.add(node, f"{what} window needs days, hours or both")
        return None
    ok = True
    zone = file_zone
    if "timezone" in m:
        zone_node = m["timezone"][1]
        name = p.text(zone_node, f"{what}.timezone")
        zone = None
        if name is not None:
            try:
                zone = load_zone(name.strip())
            except ValueError as exc:
                p.add(zone_node, f"{what}.timezone: {exc}")
        ok = zone is not None
    elif zone is None:
        p.add(node, f"{what} window has no timezone (set timezone here or at the top of the file)")
        ok = False
    days = ALL_DAYS
    if "days" in m:
        found: set[int] = set()
        items = p.items(m["days"][1], f"{what}.days", allow_single=True)
        ok = ok and items is not None
        for item in items or ():
            text = p.text(item, f"{what}.days")
            if text is None:
                ok = False
                continue
            try:
                found |= parse_days(text)
            except ValueError as exc:
                p.add(item, f"{what}.days: {exc}")
                ok = False
        days = frozenset(found)
    start, end = 0, 24 * 3600
    if "hours" in m:
        text = p.text(m["hours"][1], f"{what}.hours")
        if text is None:
            ok = False
        else:
            try:
                start, end = parse_hours(text)
            except ValueError as exc:
                p.add(m["hours"][1], f"{what}.hours: {exc}")
                ok = False
    if not ok or zone is None:
        return None
    return TimeWindow(zone=zone, days=days, start=start, end=end)
