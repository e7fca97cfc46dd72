"""The SIP and call layers compiled with mypyc, loaded only when built from the sources beside them.

``python -m telephony.native build`` compiles the per-message modules of :mod:`telephony.sip` and
the modules of :mod:`telephony.call` with mypyc (part of mypy; the same typed source, no second
implementation) into ``telephony/sip/_compiled/`` and ``telephony/call/_compiled/``, with one
stamp: the SHA-256 of the sources it was built from. On import, each package puts its directory
first on its ``__path__`` only when the stamp matches the sources as they are now, so an edited
source is never shadowed by an old build: both packages simply run interpreted until the next
build. ``HANDOFF_SIP=interpreted`` in the environment forces the interpreted modules.

Why: the SIP and call layers are most of handoffd's CPU per bridged call, spread over a few
hundred small functions (bench/RESULTS.md). ``sip/errors.py`` stays interpreted (other layers
subclass its errors, and it is not on the hot path), as do ``sip/auth.py`` and ``sip/reject.py``
(not per call) and the packages' ``__init__`` modules (they hold the check below).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: package of telephony -> its compiled modules
PACKAGES: dict[str, tuple[str, ...]] = {
    "sip": ("uri", "headers", "message", "parser", "sdp", "txmachines", "transaction", "dialog"),
    "call": (
        "attended",
        "b2bua",
        "cold",
        "dtmf",
        "legs",
        "metadata",
        "multipart",
        "offers",
        "ports",
        "positions",
        "probe",
        "registrar",
        "transfer",
        "warm",
    ),
}
DIRNAME = "_compiled"
#: the stamp of the whole build (one shared library holds both packages), in sip's directory
STAMP = Path("sip") / DIRNAME / "sources.sha256"
#: ``HANDOFF_SIP=interpreted``: never load the compiled modules
ENV = "HANDOFF_SIP"

ROOT = Path(__file__).resolve().parent  # telephony/


def sources_digest(root: Path = ROOT) -> str:
    """SHA-256 over the compiled modules' names and sources, and the interpreter's ABI tag."""
    h = hashlib.sha256(sys.implementation.cache_tag.encode())
    for package, names in PACKAGES.items():
        for name in names:
            h.update(f"\0{package}.{name}\0".encode())
            h.update((root / package / f"{name}.py").read_bytes())
    return h.hexdigest()


def fresh(root: Path = ROOT) -> bool:
    """Whether ``root`` (a copy of telephony/) holds a build made from its sources as they are."""
    try:
        stamp = (root / STAMP).read_text(encoding="ascii").strip()
        return stamp == sources_digest(root)
    except (OSError, UnicodeDecodeError):
        return False


def compiled_dir(package: str, root: Path = ROOT) -> Path | None:
    """The build of ``package`` (``sip`` or ``call``) to load, or None: not built, built from
    other sources (or for another interpreter), or ``HANDOFF_SIP=interpreted``."""
    if os.environ.get(ENV, "").strip().lower() == "interpreted" or not fresh(root):
        return None
    return root / package / DIRNAME


def status() -> str:
    """``compiled`` when the SIP and call layers were loaded from the build, else
    ``interpreted``."""
    from telephony.call import b2bua  # noqa: PLC0415 - the packages load the build, if any
    from telephony.sip import parser  # noqa: PLC0415

    loaded = {not (m.__file__ or "").endswith(".py") for m in (parser, b2bua)}
    return "compiled" if loaded == {True} else "interpreted" if loaded == {False} else "mixed"


def build(root: Path = ROOT) -> None:
    """Compile :data:`PACKAGES` of ``root`` (telephony/, run from its parent).

    The stamp is the digest of the sources read before compiling: a source edited during the
    build leaves a stamp that does not match, so that build is never loaded."""
    # the compiler is a build-time dependency only (the dev group)
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import Distribution  # type: ignore[import-untyped]  # noqa: PLC0415

    digest = sources_digest(root)
    with tempfile.TemporaryDirectory(prefix="handoff-mypyc-") as tmp:
        work = Path(tmp)
        cwd = Path.cwd()
        os.chdir(root.parent)  # mypyc names modules by their path from here
        try:
            ext = mypycify(
                [f"telephony/{pkg}/{name}.py" for pkg, names in PACKAGES.items() for name in names],
                opt_level="3",
                target_dir=str(work / "c"),
                group_name="telephony.sip._native",
            )
            dist = Distribution({"name": "handoff-compiled", "ext_modules": ext})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(work / "lib")
            cmd.build_temp = str(work / "tmp")
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        clean(root)  # no stamp while the new build is copied in
        for lib in (work / "lib" / "telephony").rglob("*.so"):
            out = root / lib.parent.name / DIRNAME
            out.mkdir(exist_ok=True)
            shutil.copy2(lib, out / lib.name)
        (root / STAMP).write_text(digest + "\n", encoding="ascii")


def clean(root: Path = ROOT) -> None:
    for package in PACKAGES:
        shutil.rmtree(root / package / DIRNAME, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m telephony.native", description=__doc__)
    ap.add_argument("action", choices=("build", "clean", "status"))
    ap.add_argument("--force", action="store_true", help="build even when the build is fresh")
    args = ap.parse_args(argv)
    if args.action == "build":
        if fresh() and not args.force:
            print("telephony: the compiled build is from these sources")
        else:
            build()
            print(f"telephony: compiled {', '.join(PACKAGES)} into */{DIRNAME}/")
    elif args.action == "clean":
        clean()
    else:
        usable = "a build from these sources" if fresh() else "no build from these sources"
        print(f"telephony: {status()} ({usable})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
