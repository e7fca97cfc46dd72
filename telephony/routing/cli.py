"""``handoffctl route --explain``: which rule a described call matches, and why.

:func:`main_explain` is the whole command; ``telephony/cli.py`` wires it in as a subcommand.
Exit status: 0 when a rule matches, 1 when none does, 2 when the rules (or the arguments) are bad.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from telephony.routing.loader import load_rules
from telephony.routing.model import CallDescription, language_from_accept_language
from telephony.routing.yamlnodes import RulesError

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_BAD_INPUT = 2


def _time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-22T03:00:00-08:00)"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset (e.g. -08:00 or Z)")
    return when


def _triage(text: str) -> int:
    if text not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a triage level (1, 2 or 3)")
    return int(text)


def build_parser(prog: str = "handoffctl route") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show which routing rule a described call matches, and why.",
    )
    parser.add_argument("--explain", action="store_true", help="accepted for readability")
    parser.add_argument(
        "--rules",
        default="routing_rules",
        metavar="DIR",
        help="rule directory (its *.yaml files) or one file (default: routing_rules)",
    )
    parser.add_argument("--trunk", help="PSAP-side trunk the call came in on, e.g. psap-a")
    parser.add_argument("--called", help="number the transfer is for, e.g. 988")
    parser.add_argument("--caller", help="911 caller's number, e.g. +18055550123")
    parser.add_argument("--triage", type=_triage, help="triage level: 1, 2 or 3")
    lang = parser.add_mutually_exclusive_group()
    lang.add_argument("--language", help="caller's language tag, e.g. es or es-MX")
    lang.add_argument("--accept-language", help="an Accept-Language header value")
    parser.add_argument(
        "--time",
        type=_time,
        help="when the call happens, ISO 8601 with offset (default: now)",
    )
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    return parser


def main_explain(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``handoffctl route --explain`` with ``argv``; return the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        print(f"handoffctl: the routing rules are not valid:\n{exc}", file=err)
        return EXIT_BAD_INPUT
    language = args.language
    if args.accept_language is not None:
        language = language_from_accept_language(args.accept_language)
    call = CallDescription(
        trunk=args.trunk,
        called=args.called,
        caller=args.caller,
        triage=args.triage,
        language=language,
    )
    now = args.time if args.time is not None else datetime.now(UTC)
    explanation = rules.explain(call, now)
    if args.json:
        print(json.dumps(explanation.as_dict(), indent=2), file=out)
    else:
        print(explanation.text(), file=out)
    return EXIT_MATCH if explanation.decision is not None else EXIT_NO_MATCH
