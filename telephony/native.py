"""The SIP layer as compiled code (mypyc), loaded only when it was built from the sources beside it.

``python -m telephony.native build`` compiles the hot modules of :mod:`telephony.sip` with mypyc
(part of mypy; the same typed source, no second implementation) into ``telephony/sip/_compiled/``
with a stamp: the SHA-256 of the sources it was built from. On import, :mod:`telephony.sip` puts
that directory first on its ``__path__`` only when the stamp matches the sources as they are now,
so an edited source is never shadowed by an old build: the package simply runs interpreted until
the next build. ``HANDOFF_SIP=interpreted`` in the environment forces the interpreted modules.

Why: the SIP layer is about half of handoffd's CPU per bridged call, spread over a hundred small
functions (bench/RESULTS.md); compiled, a call costs about 0.8x (measured, same run).
``errors.py`` stays interpreted (other layers subclass its errors, and it is not on the hot path),
as do ``auth.py`` and ``reject.py`` (not per call).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: modules of telephony.sip that are compiled (the per-message path)
COMPILED = ("uri", "headers", "message", "parser", "sdp", "txmachines", "transaction", "dialog")
DIRNAME = "_compiled"
STAMP = "sources.sha256"
#: ``HANDOFF_SIP=interpreted``: never load the compiled modules
ENV = "HANDOFF_SIP"

SIP = Path(__file__).resolve().parent / "sip"


def sources_digest(pkg: Path = SIP) -> str:
    """SHA-256 over the compiled modules' names and sources, and the interpreter's ABI tag."""
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name in COMPILED:
        h.update(b"\0" + name.encode() + b"\0")
        h.update((pkg / f"{name}.py").read_bytes())
    return h.hexdigest()


def fresh(pkg: Path = SIP) -> bool:
    """Whether ``pkg`` holds a build made from its sources as they are now."""
    try:
        stamp = (pkg / DIRNAME / STAMP).read_text(encoding="ascii").strip()
        return stamp == sources_digest(pkg)
    except (OSError, UnicodeDecodeError):
        return False


def compiled_dir(pkg: Path = SIP) -> Path | None:
    """The build to load for ``pkg``, or None: not built, built from other sources (or for
    another interpreter), or ``HANDOFF_SIP=interpreted``."""
    if os.environ.get(ENV, "").strip().lower() == "interpreted" or not fresh(pkg):
        return None
    return pkg / DIRNAME


def status() -> str:
    """``compiled`` when telephony.sip's hot modules were loaded from the build, else
    ``interpreted``."""
    from telephony.sip import parser  # noqa: PLC0415 - the package loads the build, if any

    return "interpreted" if (parser.__file__ or "").endswith(".py") else "compiled"


def build(root: Path = SIP.parent.parent) -> Path:
    """Compile :data:`COMPILED` (run from the project root ``root``); returns the directory.

    The stamp is the digest of the sources read before compiling: a source edited during the
    build leaves a stamp that does not match, so that build is never loaded."""
    # the compiler is a build-time dependency only (the dev group)
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import Distribution  # type: ignore[import-untyped]  # noqa: PLC0415

    pkg = root / "telephony" / "sip"
    digest = sources_digest(pkg)
    out = pkg / DIRNAME
    with tempfile.TemporaryDirectory(prefix="handoff-mypyc-") as tmp:
        work = Path(tmp)
        cwd = Path.cwd()
        os.chdir(root)  # mypyc names modules by their path from here
        try:
            ext = mypycify(
                [f"telephony/sip/{name}.py" for name in COMPILED],
                opt_level="3",
                target_dir=str(work / "c"),
                group_name="telephony.sip._native",
            )
            dist = Distribution({"name": "handoff-sip-compiled", "ext_modules": ext})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(work / "lib")
            cmd.build_temp = str(work / "tmp")
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        staged = work / "out"
        staged.mkdir()
        for lib in (work / "lib").rglob("*.so"):
            shutil.copy2(lib, staged / lib.name)
        (staged / STAMP).write_text(digest + "\n", encoding="ascii")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(staged, out)
    return out


def clean(pkg: Path = SIP) -> None:
    shutil.rmtree(pkg / DIRNAME, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m telephony.native", description=__doc__)
    ap.add_argument("action", choices=("build", "clean", "status"))
    ap.add_argument("--force", action="store_true", help="build even when the build is fresh")
    args = ap.parse_args(argv)
    if args.action == "build":
        if fresh() and not args.force:
            print(f"telephony.sip: the build in {SIP / DIRNAME} is from these sources")
        else:
            print(f"compiled telephony.sip into {build()}")
    elif args.action == "clean":
        clean()
    else:
        d = compiled_dir()
        print(f"telephony.sip: {status()} ({'build ' + str(d) if d else 'no usable build'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
