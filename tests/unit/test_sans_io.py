"""House rule 1: telephony/sip and telephony/call never do I/O themselves.

Scans every module's imports (the AST, so a lazy import inside a function counts too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "telephony"
FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "threading",
    "subprocess",
    "redis",
    "aiohttp",
    "uvloop",
    "time",
    "telephony.io",
}
SANS_IO = ["sip", "call"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for pkg in SANS_IO for p in (ROOT / pkg).rglob("*.py"))


def test_the_sans_io_packages_have_modules() -> None:
    assert any(p.parent.name == "sip" for p in _modules())


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_io_imports(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_scanner_sees_a_forbidden_import(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    import asyncio\n    from redis import asyncio as r\n")
    assert {"asyncio", "redis"} <= _imports(mod)
