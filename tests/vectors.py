"""The one loader for test vectors under ``tests/vectors/`` (house rule 7).

Vectors are raw files with their line endings kept (CRLF for SIP and SDP);
``tests/vectors/.gitattributes`` stops git from converting them.
"""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "vectors"


def load_vector(relpath: str) -> bytes:
    """Raw bytes of ``tests/vectors/<relpath>`` (e.g. ``"sip/options.sip"``)."""
    path = (VECTORS / relpath).resolve()
    if VECTORS not in path.parents:
        raise ValueError(f"vector path escapes tests/vectors: {relpath!r}")
    return path.read_bytes()


def vector_names(subdir: str, pattern: str = "*") -> list[str]:
    """Sorted paths, relative to ``tests/vectors/``, of the files in ``subdir`` matching
    ``pattern`` (a glob such as ``"bad-*.sip"``); ready for :func:`load_vector`."""
    return sorted(
        p.relative_to(VECTORS).as_posix() for p in (VECTORS / subdir).glob(pattern) if p.is_file()
    )
