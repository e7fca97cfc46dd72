from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from telephony import __version__
from telephony.cli import handoffctl_main, handoffd_main


def test_handoffctl_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert handoffctl_main([]) == 0
    assert "usage: handoffctl" in capsys.readouterr().out


def test_version_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for main, prog in ((handoffctl_main, "handoffctl"), (handoffd_main, "handoffd")):
        with pytest.raises(SystemExit) as exc:
            main(["--version"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "telephony", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    assert "usage: handoffctl" in out.stdout


def test_help_lists_events_and_report(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        handoffctl_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "events [--follow]" in out and "report --from --to" in out
    assert "{check-config,route,events,report}" in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        handoffctl_main(["tail"])
    assert exc.value.code == 2
    assert "invalid choice: 'tail'" in capsys.readouterr().err


# Every case below fails before any connection is made: these tests need no Redis (nothing
# listens on port 1, so a bug that did connect would fail with status 1, not the expected 2).
NOWHERE = ["--redis-url", "redis://127.0.0.1:1/0"]
MARCH = ["--from", "2026-03-01", "--to", "2026-03-31"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "2026-13-01", "--to", "2026-03-31"],
            "handoffctl report: --from: '2026-13-01' is not a date (YYYY-MM-DD)\n",
        ),
        (
            ["--from", "2026-03-01", "--to", "2026-02-30"],
            "handoffctl report: --to: '2026-02-30' is not a date (YYYY-MM-DD)\n",
        ),
        (
            ["--from", "March", "--to", "2026-03-31"],
            "handoffctl report: --from: 'March' is not a date (YYYY-MM-DD) or a date-time "
            "(YYYY-MM-DDTHH:MM[:SS])\n",
        ),
        (
            ["--from", "2026-03-31", "--to", "2026-03-01"],
            "handoffctl report: --to: '2026-03-01' is not after --from '2026-03-31': "
            "the range is empty\n",
        ),
        (
            ["--from", "2025-01-01", "--to", "2026-03-31"],
            "handoffctl report: --to: '2026-03-31' is 455.0 days after --from '2025-01-01'; "
            "a report covers at most 366 days\n",
        ),
        (
            [*MARCH, "--tz", "Mars/Olympus"],
            "handoffctl report: --tz: 'Mars/Olympus' is not a time zone (an IANA name such as "
            "America/Los_Angeles, or UTC)\n",
        ),
    ],
)
def test_report_bad_dates_are_status_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    tz = [] if "--tz" in args else ["--tz", "UTC"]
    assert handoffctl_main(["report", *args, *tz, *NOWHERE]) == 2
    got = capsys.readouterr()
    assert (got.out, got.err) == ("", message)


def test_report_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert handoffctl_main(["report", "--from", "2026-03-01", *NOWHERE]) == 2  # no --to
    err = capsys.readouterr().err
    assert err.startswith("usage: handoffctl report") and "--to" in err
    assert handoffctl_main(["report", *MARCH, "--format", "xls", *NOWHERE]) == 2
    assert "invalid choice: 'xls'" in capsys.readouterr().err
    assert handoffctl_main(["report", *MARCH, "--redis-url", "http://x"]) == 2
    assert capsys.readouterr().err.startswith("handoffctl report: --redis-url: 'http://x'")


def test_report_missing_config_is_status_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    assert handoffctl_main(["report", *MARCH, "--tz", "UTC", "--config", str(missing)]) == 1
    got = capsys.readouterr()
    assert got.out == ""
    assert got.err.startswith("handoffctl report: configuration not valid:\n")
    assert f"{missing}: cannot read: No such file or directory" in got.err


def test_events_missing_config_is_status_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    for mode in (["--follow"], []):
        assert handoffctl_main(["events", *mode, "--config", str(missing)]) == 1
        got = capsys.readouterr()
        assert got.out == ""
        assert got.err.startswith("handoffctl events: configuration not valid:\n")
        assert f"{missing}: cannot read: No such file or directory" in got.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow", "--group", "cad"], "--group needs --consumer"),
        (["--follow", "--consumer", "cad-1"], "--consumer needs --group"),
        (["--group", "cad", "--consumer", "c"], "--group: a consumer group is read with --follow"),
        (["--follow", "--group", " ", "--consumer", "c"], "--group: ' ' is not a name"),
        (["--follow", "--start", "yesterday"], "--start: 'yesterday' is not '$', '0' or a"),
        (["--follow", "--start", "12-3-4"], "--start: '12-3-4' is not"),
        (["--start", "$"], "--start: '$' (only new events) needs --follow"),
        (["--follow", "--count", "0"], "--count: 0 is not a positive number"),
        (["--count", "-5"], "--count: -5 is not a positive number"),
        (["--follow", "--redis-url", "http://x"], "--redis-url: 'http://x' is not a redis://"),
    ],
)
def test_events_argument_errors_are_status_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["events", *args] if "--redis-url" in args else ["events", *args, *NOWHERE]
    assert handoffctl_main(argv) == 2
    got = capsys.readouterr()
    assert got.out == ""
    assert got.err.startswith(f"handoffctl events: {message}"), got.err
    assert got.err.count("\n") == 1


def test_events_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert handoffctl_main(["events", "--count", "many", *NOWHERE]) == 2
    assert "argument --count: invalid int value: 'many'" in capsys.readouterr().err
    assert handoffctl_main(["events", "--tail", *NOWHERE]) == 2
    assert "unrecognized arguments: --tail" in capsys.readouterr().err
    assert handoffctl_main(["events", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: handoffctl events") and "--follow" in out
