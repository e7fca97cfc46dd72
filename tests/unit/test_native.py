"""The compiled SIP layer is loaded only when it was built from the sources beside it."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from telephony import native


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    """A copy of telephony/sip's compiled sources with a build stamp that matches them."""
    for name in native.COMPILED:
        shutil.copy(native.SIP / f"{name}.py", tmp_path / f"{name}.py")
    (tmp_path / native.DIRNAME).mkdir()
    (tmp_path / native.DIRNAME / native.STAMP).write_text(native.sources_digest(tmp_path) + "\n")
    return tmp_path


def test_a_build_from_these_sources_is_used(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    assert native.fresh(pkg)
    assert native.compiled_dir(pkg) == pkg / native.DIRNAME


@pytest.mark.parametrize("name", native.COMPILED)
def test_an_edited_source_is_never_shadowed_by_the_old_build(
    pkg: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    src = pkg / f"{name}.py"
    src.write_text(src.read_text() + "\n# edited\n")
    assert not native.fresh(pkg)
    assert native.compiled_dir(pkg) is None


def test_no_build_a_missing_source_or_a_broken_stamp_means_interpreted(
    pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    stamp = pkg / native.DIRNAME / native.STAMP
    stamp.write_bytes(b"\xff\xfe")
    assert native.compiled_dir(pkg) is None
    stamp.unlink()
    assert native.compiled_dir(pkg) is None
    (pkg / native.DIRNAME).rmdir()
    assert native.compiled_dir(pkg) is None
    (pkg / native.DIRNAME).mkdir()
    stamp.write_text(native.sources_digest(pkg))
    (pkg / "parser.py").unlink()
    assert native.compiled_dir(pkg) is None


def test_the_environment_can_force_the_interpreted_modules(
    pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(native.ENV, "interpreted")
    assert native.fresh(pkg)
    assert native.compiled_dir(pkg) is None


def test_this_process_loaded_what_the_stamp_allows() -> None:
    # in `make test` this runs once with the build (compiled) and once with
    # HANDOFF_SIP=interpreted: each time every listed module must come from the expected place
    expected = native.compiled_dir() is not None
    for name in native.COMPILED:
        module = importlib.import_module(f"telephony.sip.{name}")
        loaded_compiled = not (module.__file__ or "").endswith(".py")
        assert loaded_compiled == expected, (name, module.__file__)
    assert native.status() == ("compiled" if expected else "interpreted")
    # errors.py stays interpreted: other layers subclass its errors
    errors = importlib.import_module("telephony.sip.errors")
    assert (errors.__file__ or "").endswith(".py")
