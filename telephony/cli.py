"""Command-line entry points: ``handoffd`` (the daemon) and ``handoffctl`` (operator tool).

``handoffd --config FILE [--sip-listen HOST:PORT] [--http-listen HOST:PORT] [--redis-url URL]``
runs the daemon (flags override the file). ``handoffctl check-config FILE`` validates a config
and the rules it names; ``handoffctl route --explain ...`` shows which rule a call matches;
``handoffctl events [--follow] ...`` prints the transfer event stream as JSON lines
(:mod:`telephony.recording.follow`, docs/records.md); ``handoffctl report --from ... --to ...``
writes the KPI report (:mod:`telephony.recording.report`, docs/report.md).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from telephony import __version__

#: the ``handoffctl`` commands
COMMANDS = ("check-config", "route", "events", "report")


def _handoffd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handoffd",
        description="SIP B2BUA that hands 911 callers to 988 crisis lines.",
    )
    parser.add_argument("--version", action="version", version=f"handoffd {__version__}")
    parser.add_argument("--config", required=True, metavar="FILE", help="config file (YAML)")
    parser.add_argument("--sip-listen", metavar="HOST:PORT", help="override sip.listen host/port")
    parser.add_argument("--http-listen", metavar="HOST:PORT", help="override http host/port")
    parser.add_argument("--redis-url", metavar="URL", help="override redis.url")
    return parser


def handoffd_main(argv: Sequence[str] | None = None) -> int:
    args = _handoffd_parser().parse_args(argv)
    # No collector passes while hundreds of modules are imported (~0.1 s of startup):
    # telephony.daemon.main freezes what exists and turns the collector back on.
    gc.disable()
    try:
        return _run_handoffd(args)
    finally:
        gc.enable()


def _run_handoffd(args: argparse.Namespace) -> int:
    from telephony.config import ConfigError, load_config, with_overrides  # noqa: PLC0415
    from telephony.routing import RulesError  # noqa: PLC0415

    try:
        config = with_overrides(
            load_config(args.config),
            sip_listen=args.sip_listen,
            http_listen=args.http_listen,
            redis_url=args.redis_url,
        )
        from telephony.daemon import main  # noqa: PLC0415

        return main(config)
    except (ConfigError, RulesError) as err:
        print(f"handoffd: configuration not valid:\n{err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"handoffd: cannot start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def handoffctl_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="handoffctl",
        description="Operator tool for handoffd.",
        epilog=(
            "commands:\n"
            "  check-config FILE     validate a config file and the routing rules it names\n"
            "  route --explain ...   which routing rule a described call matches, and why\n"
            "  events [--follow]     transfer events from Redis, one JSON object per line\n"
            "  report --from --to    KPI report of 911 -> 988 transfers (table, csv, json)\n"
            "run 'handoffctl COMMAND --help' for a command's options"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"handoffctl {__version__}")
    parser.add_argument("command", nargs="?", choices=COMMANDS)
    if not args or args[0].startswith("-"):
        parser.parse_args(args)
        parser.print_help()
        return 0
    command, rest = args[0], args[1:]
    if command == "check-config":
        from telephony.config import main_check_config  # noqa: PLC0415

        return main_check_config(rest)
    if command == "route":
        from telephony.routing.cli import main_explain  # noqa: PLC0415

        return main_explain(rest)
    if command == "events":
        from telephony.recording.follow import main_events  # noqa: PLC0415

        return main_events(rest)
    if command == "report":
        from telephony.recording.report import main_report  # noqa: PLC0415

        return main_report(rest)
    parser.parse_args(args)  # unknown command: argparse reports it (exit 2)
    return 2
