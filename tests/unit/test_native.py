"""The compiled SIP and call layers are loaded only when built from the sources beside them."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from telephony import native

SOURCES = [(pkg, name) for pkg, names in native.PACKAGES.items() for name in names]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the compiled sources (a telephony/ of its own) with a stamp that matches them."""
    monkeypatch.delenv(native.ENV, raising=False)
    for pkg, name in SOURCES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        shutil.copy(native.ROOT / pkg / f"{name}.py", tmp_path / pkg / f"{name}.py")
    (tmp_path / native.STAMP).parent.mkdir()
    (tmp_path / native.STAMP).write_text(native.sources_digest(tmp_path) + "\n")
    return tmp_path


def test_a_build_from_these_sources_is_used(root: Path) -> None:
    assert native.fresh(root)
    for pkg in native.PACKAGES:
        assert native.compiled_dir(pkg, root) == root / pkg / native.DIRNAME


@pytest.mark.parametrize(("pkg", "name"), SOURCES)
def test_an_edited_source_is_never_shadowed_by_the_old_build(
    root: Path, pkg: str, name: str
) -> None:
    src = root / pkg / f"{name}.py"
    src.write_text(src.read_text() + "\n# edited\n")
    assert not native.fresh(root)
    # one shared library holds both packages: neither may load it
    assert all(native.compiled_dir(p, root) is None for p in native.PACKAGES)


def test_no_build_a_missing_source_or_a_broken_stamp_means_interpreted(root: Path) -> None:
    stamp = root / native.STAMP
    stamp.write_bytes(b"\xff\xfe")
    assert native.compiled_dir("sip", root) is None
    stamp.unlink()
    assert native.compiled_dir("sip", root) is None
    stamp.write_text(native.sources_digest(root))
    assert native.compiled_dir("sip", root) is not None
    (root / "sip" / "parser.py").unlink()
    assert native.compiled_dir("sip", root) is None


def test_the_environment_can_force_the_interpreted_modules(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(native.ENV, "interpreted")
    assert native.fresh(root)
    assert native.compiled_dir("call", root) is None


def test_this_process_loaded_what_the_stamp_allows() -> None:
    # in `make test` this runs once with the build (compiled) and once with
    # HANDOFF_SIP=interpreted: each time every listed module must come from the expected place
    expected = native.compiled_dir("sip") is not None
    for pkg, name in SOURCES:
        module = importlib.import_module(f"telephony.{pkg}.{name}")
        loaded_compiled = not (module.__file__ or "").endswith(".py")
        assert loaded_compiled == expected, (pkg, name, module.__file__)
    assert native.status() == ("compiled" if expected else "interpreted")
    # errors.py stays interpreted: other layers subclass its errors
    errors = importlib.import_module("telephony.sip.errors")
    assert (errors.__file__ or "").endswith(".py")
