"""G.711 μ-law (PCMU) and A-law (PCMA): decode, encode and transcode with numpy lookup tables.

Bit-exact with the ITU-T reference implementation of Rec. G.711 (the ``ulaw_compress`` /
``alaw_compress`` / ``*_expand`` routines of the G.191 Software Tool Library), on 16-bit linear
samples: μ-law looks at the 14 most significant bits, A-law at the 12 most significant bits, and a
negative sample is folded onto the positive scale by one's complement (``~x``), so the quantiser
is symmetric around -0.5 LSB like the standard's decision table.

That is where the old Sun/CCITT C code (the one in Python's ``audioop``) differs for μ-law: it
negates (``-x``) instead, which moves every negative μ-law decision threshold by 4 (16-bit) LSBs:
``audioop.lin2ulaw(x) == ulaw_encode(x - 4)`` for negative ``x``. Its A-law encoder and both
decoders agree with G.711 and with this module exactly (tests/unit/test_g711.py checks all 65,536
inputs against an independent scalar transcription of the reference, and against ``audioop``).

Tables (read-only numpy arrays, built once at import, vectorised):

* ``ULAW_DECODE`` / ``ALAW_DECODE``: 256 ``int16`` values, indexed by the code byte.
* ``ULAW_ENCODE`` / ``ALAW_ENCODE``: 65,536 ``uint8`` codes, indexed by the sample's ``int16``
  bit pattern read as ``uint16`` (``samples.view(numpy.uint16)``): no branch, one gather.

Decoded values are the G.711 decoder outputs scaled to 16 bits: μ-law ±32124 at most, A-law
±32256; silence is μ-law 0xFF (or 0x7F) and A-law 0xD5 (or 0x55).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

#: RTP payload types (RFC 3551 static assignments)
PCMU: Final = 0
PCMA: Final = 8

#: code bytes that decode to 0 (μ-law) and ±8 (A-law, its smallest magnitude)
ULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5


def _ulaw_decode_table() -> NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32)
    inverted = ~code & 0xFF  # the code is transmitted with all bits inverted
    exponent = (inverted >> 4) & 0x7
    mantissa = inverted & 0xF
    step = 4 << (exponent + 1)  # one quantisation step in this segment (16-bit scale)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    table: NDArray[np.int16] = np.where(code < 0x80, -magnitude, magnitude).astype(np.int16)
    return table


def _alaw_decode_table() -> NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32)
    ix = (code ^ 0x55) & 0x7F  # even bits are toggled on the line
    exponent = ix >> 4
    mantissa = ix & 0xF
    mantissa = np.where(exponent > 0, mantissa + 16, mantissa)  # the implicit leading 1
    magnitude = ((mantissa << 4) + 8) << np.maximum(exponent - 1, 0)
    table: NDArray[np.int16] = np.where(code > 0x7F, magnitude, -magnitude).astype(np.int16)
    return table


def _bit_length(values: NDArray[np.int32], bits: int) -> NDArray[np.int32]:
    """``int.bit_length`` of each (non-negative, < 2**bits) value."""
    length = np.zeros_like(values)
    for k in range(bits):
        length += values >= (1 << k)
    return length


def _ulaw_encode_table() -> NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32)
    folded = np.where(x < 0, ~x, x)  # one's complement for negatives (G.711 symmetry)
    absno = np.minimum((folded >> 2) + 33, 0x1FFF)  # 14-bit magnitude + the μ-law bias
    segment = 1 + _bit_length(absno >> 6, 7)  # 1..8
    high = 8 - segment
    low = 0xF - ((absno >> segment) & 0xF)
    code = (high << 4) | low | np.where(x >= 0, 0x80, 0)
    table = np.empty(65536, dtype=np.uint8)
    table[x & 0xFFFF] = code
    return table


def _alaw_encode_table() -> NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32)
    ix = np.where(x < 0, ~x, x) >> 4  # 12-bit magnitude, 0..2047
    exponent = np.where(ix > 15, _bit_length(ix, 11) - 4, 0)  # 0..7
    mantissa = np.where(exponent > 0, (ix >> np.maximum(exponent - 1, 0)) - 16, ix)
    code = ((exponent << 4) + mantissa) | np.where(x >= 0, 0x80, 0)
    table = np.empty(65536, dtype=np.uint8)
    table[x & 0xFFFF] = code ^ 0x55
    return table


def _frozen(a: NDArray[np.generic]) -> None:
    a.setflags(write=False)


ULAW_DECODE: Final[NDArray[np.int16]] = _ulaw_decode_table()
ALAW_DECODE: Final[NDArray[np.int16]] = _alaw_decode_table()
ULAW_ENCODE: Final[NDArray[np.uint8]] = _ulaw_encode_table()
ALAW_ENCODE: Final[NDArray[np.uint8]] = _alaw_encode_table()
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _frozen(_table)

#: ``bytes.translate`` maps between the laws (decode with one, re-encode with the other): what a
#: transcoding two-party path would use. Same result as decode + encode, sample for sample.
ULAW_TO_ALAW: Final[bytes] = ALAW_ENCODE[ULAW_DECODE.view(np.uint16)].tobytes()
ALAW_TO_ULAW: Final[bytes] = ULAW_ENCODE[ALAW_DECODE.view(np.uint16)].tobytes()

DECODE_TABLES: Final[dict[int, NDArray[np.int16]]] = {PCMU: ULAW_DECODE, PCMA: ALAW_DECODE}
ENCODE_TABLES: Final[dict[int, NDArray[np.uint8]]] = {PCMU: ULAW_ENCODE, PCMA: ALAW_ENCODE}
SILENCE_BYTE: Final[dict[int, int]] = {PCMU: ULAW_SILENCE, PCMA: ALAW_SILENCE}


def ulaw_decode(payload: bytes) -> NDArray[np.int16]:
    """μ-law code bytes → 16-bit linear samples (a new array)."""
    return ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_decode(payload: bytes) -> NDArray[np.int16]:
    """A-law code bytes → 16-bit linear samples (a new array)."""
    return ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def ulaw_encode(samples: NDArray[np.int16]) -> bytes:
    """16-bit linear samples → μ-law code bytes."""
    return ULAW_ENCODE[_as_uint16(samples)].tobytes()


def alaw_encode(samples: NDArray[np.int16]) -> bytes:
    """16-bit linear samples → A-law code bytes."""
    return ALAW_ENCODE[_as_uint16(samples)].tobytes()


def decode(payload: bytes, payload_type: int) -> NDArray[np.int16]:
    """Decode a PCMU (0) or PCMA (8) payload; ``ValueError`` for any other payload type."""
    return _decode_table(payload_type)[np.frombuffer(payload, dtype=np.uint8)]


def encode(samples: NDArray[np.int16], payload_type: int) -> bytes:
    """Encode 16-bit samples as PCMU (0) or PCMA (8); ``ValueError`` for any other type."""
    return _encode_table(payload_type)[_as_uint16(samples)].tobytes()


def transcode(payload: bytes, from_type: int, to_type: int) -> bytes:
    """Re-encode a G.711 payload from one law to the other (identity when they are equal)."""
    _decode_table(from_type)
    _decode_table(to_type)
    if from_type == to_type:
        return payload
    return payload.translate(ULAW_TO_ALAW if from_type == PCMU else ALAW_TO_ULAW)


def _as_uint16(samples: NDArray[np.int16]) -> NDArray[np.uint16]:
    if samples.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, not {samples.dtype}")
    return samples.view(np.uint16)


def _decode_table(payload_type: int) -> NDArray[np.int16]:
    try:
        return DECODE_TABLES[payload_type]
    except KeyError:
        raise ValueError(f"not a G.711 payload type: {payload_type!r}") from None


def _encode_table(payload_type: int) -> NDArray[np.uint8]:
    try:
        return ENCODE_TABLES[payload_type]
    except KeyError:
        raise ValueError(f"not a G.711 payload type: {payload_type!r}") from None
