"""Command-line entry points: ``handoffd`` (the daemon) and ``handoffctl`` (operator tool).

The daemon itself lands with the B2BUA issue; for now both commands parse their arguments,
print help and version, and exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from telephony import __version__


def _handoffd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handoffd",
        description="SIP B2BUA that hands 911 callers to 988 crisis lines.",
    )
    parser.add_argument("--version", action="version", version=f"handoffd {__version__}")
    return parser


def _handoffctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handoffctl",
        description="Operator tool for handoffd: check configuration, explain routing, reports.",
    )
    parser.add_argument("--version", action="version", version=f"handoffctl {__version__}")
    return parser


def handoffd_main(argv: Sequence[str] | None = None) -> int:
    parser = _handoffd_parser()
    parser.parse_args(argv)
    parser.print_help()
    print("\nhandoffd: the daemon is not implemented yet in this release.", file=sys.stderr)
    return 2


def handoffctl_main(argv: Sequence[str] | None = None) -> int:
    parser = _handoffctl_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
