from __future__ import annotations

import subprocess
import sys

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
