"""G.711 μ-law / A-law tables against the ITU-T reference algorithm, known values and audioop.

The oracle here is an independent scalar transcription of the G.191 Software Tool Library's
``ulaw_compress`` / ``ulaw_expand`` / ``alaw_compress`` / ``alaw_expand`` (the ITU-T reference
code for Rec. G.711), one sample at a time with its loops, checked against every one of the
65,536 linear inputs and 256 codes; the module builds its tables vectorised, another way.
"""

from __future__ import annotations

import struct
import warnings
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.media import g711
from telephony.media.g711 import PCMA, PCMU

ALL_LINEAR = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))

# ---------------------------------------------------------------------------- the reference


def ref_ulaw_compress(x: int) -> int:
    """G.191 ``ulaw_compress`` for one 16-bit sample (14 MSBs used)."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x8 - segno
    low_nibble = 0xF - ((absno >> segno) & 0xF)
    code = (high_nibble << 4) | low_nibble
    if x >= 0:
        code |= 0x80
    return code


def ref_ulaw_expand(code: int) -> int:
    """G.191 ``ulaw_expand``: 16-bit (14-bit left-justified) decoder output."""
    sign = -1 if code < 0x80 else 1
    mantissa = ~code & 0xFF
    exponent = (mantissa >> 4) & 0x7
    segment = exponent + 1
    mantissa &= 0xF
    step = 4 << segment
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def ref_alaw_compress(x: int) -> int:
    """G.191 ``alaw_compress`` for one 16-bit sample (12 MSBs used)."""
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def ref_alaw_expand(code: int) -> int:
    """G.191 ``alaw_expand``: 16-bit (12-bit left-justified) decoder output."""
    ix = (code ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0xF
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 0x8
    if iexp > 1:
        mant <<= iexp - 1
    return mant if code > 127 else -mant


def audioop_module() -> ModuleType | None:
    """Python's deprecated ``audioop`` (3.11, 3.12; removed in 3.13), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # noqa: PLC0415 (deprecated module: imported only for this check)
        except ImportError:
            return None
    return audioop


# ---------------------------------------------------------------------------- known values


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8), (0xEF, 132)],
)
def test_ulaw_decode_known_values(code: int, value: int) -> None:
    assert int(g711.ULAW_DECODE[code]) == value
    assert g711.ulaw_decode(bytes([code])).tolist() == [value]


@pytest.mark.parametrize(
    ("code", "value"), [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24)]
)
def test_alaw_decode_known_values(code: int, value: int) -> None:
    assert int(g711.ALAW_DECODE[code]) == value
    assert g711.alaw_decode(bytes([code])).tolist() == [value]


@pytest.mark.parametrize(
    ("value", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (-1, 0x7F, 0x55),  # one's complement: -1 is the mirror of 0 ("negative zero")
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
        (32124, 0x80, 0xAA),
        (-32124, 0x00, 0x2A),
        (4, 0xFE, 0xD5),  # μ-law's first threshold: 14-bit value 1
        (3, 0xFF, 0xD5),
        (16, 0xFD, 0xD4),  # A-law's first threshold: 12-bit value 1
    ],
)
def test_encode_known_values(value: int, ulaw: int, alaw: int) -> None:
    samples = np.array([value], dtype=np.int16)
    assert g711.ulaw_encode(samples) == bytes([ulaw])
    assert g711.alaw_encode(samples) == bytes([alaw])
    assert g711.encode(samples, PCMU) == bytes([ulaw])
    assert g711.encode(samples, PCMA) == bytes([alaw])


# ---------------------------------------------------------------------------- exhaustive


def test_decode_tables_match_the_reference_for_every_code() -> None:
    assert g711.ULAW_DECODE.tolist() == [ref_ulaw_expand(c) for c in range(256)]
    assert g711.ALAW_DECODE.tolist() == [ref_alaw_expand(c) for c in range(256)]
    assert g711.ULAW_DECODE.dtype == np.int16 and g711.ALAW_DECODE.dtype == np.int16


def test_encode_tables_match_the_reference_for_every_sample() -> None:
    values = ALL_LINEAR.tolist()
    ulaw = bytes(ref_ulaw_compress(x) for x in values)
    alaw = bytes(ref_alaw_compress(x) for x in values)
    assert g711.ulaw_encode(ALL_LINEAR) == ulaw
    assert g711.alaw_encode(ALL_LINEAR) == alaw
    # and the table layout: index = the int16 bit pattern as uint16
    assert g711.ULAW_ENCODE[0x0000] == 0xFF and g711.ULAW_ENCODE[0xFFFF] == 0x7F
    assert g711.ALAW_ENCODE[0x8000] == 0x2A


def test_every_code_survives_decode_then_encode() -> None:
    ulaw = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    # μ-law has two zeros: 0x7F ("-0") decodes to 0, which encodes as 0xFF ("+0")
    assert ulaw == bytes(0xFF if c == 0x7F else c for c in range(256))
    assert g711.alaw_encode(g711.alaw_decode(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize("law", [PCMU, PCMA])
def test_quantiser_is_monotonic_symmetric_and_bounded(law: int) -> None:
    y = g711.decode(g711.encode(ALL_LINEAR, law), law).astype(np.int32)
    x = ALL_LINEAR.astype(np.int32)
    assert (np.diff(y) >= 0).all()  # monotonic
    # symmetric about -0.5 LSB: x and ~x (= -x - 1) decode to opposite values
    assert (y == -y[::-1]).all()
    # error at most half a quantisation interval of the code's segment (plus the LSBs the
    # law ignores), except in the overload region beyond the largest decoder output
    top = 32124 if law == PCMU else 32256
    inside = np.abs(x) <= top
    codes = np.frombuffer(g711.encode(ALL_LINEAR, law), dtype=np.uint8)
    if law == PCMU:
        exponent = ((~codes.astype(np.int32)) >> 4) & 0x7
        half_step = 2 << (exponent + 1)
        ignored = 3
    else:
        exponent = ((codes.astype(np.int32) ^ 0x55) >> 4) & 0x7
        half_step = 8 << np.maximum(exponent - 1, 0)
        ignored = 15
    assert (np.abs(y - x)[inside] <= (half_step + ignored)[inside]).all()
    assert (np.abs(y - x) <= 32767 - top + half_step.max()).all()


def test_transcode_equals_decode_then_encode() -> None:
    assert g711.transcode(ALL_CODES, PCMU, PCMA) == g711.alaw_encode(g711.ulaw_decode(ALL_CODES))
    assert g711.transcode(ALL_CODES, PCMA, PCMU) == g711.ulaw_encode(g711.alaw_decode(ALL_CODES))
    assert g711.transcode(ALL_CODES, PCMU, PCMU) == ALL_CODES
    assert g711.ULAW_TO_ALAW[0xFF] == 0xD5  # silence stays silence (0 → +8, the nearest level)


@given(st.binary(max_size=400))
def test_decode_encode_any_payload(payload: bytes) -> None:
    for law in (PCMU, PCMA):
        samples = g711.decode(payload, law)
        assert samples.dtype == np.int16 and len(samples) == len(payload)
        assert len(g711.encode(samples, law)) == len(payload)


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not a G\.711 payload type"):
        g711.decode(b"\xff", 9)
    with pytest.raises(ValueError, match=r"not a G\.711 payload type"):
        g711.encode(np.zeros(1, dtype=np.int16), 101)
    with pytest.raises(ValueError, match=r"not a G\.711 payload type"):
        g711.transcode(b"\xff", PCMU, 3)
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(np.zeros(4, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read-only"):
        g711.ULAW_DECODE[0] = 1


# ---------------------------------------------------------------------------- audioop


def test_cross_check_with_audioop() -> None:
    """Python's ``audioop`` (the Sun/CCITT C code) as a second, independent implementation:
    both decoders and the A-law encoder agree everywhere; its μ-law encoder negates negative
    samples instead of taking the one's complement, which moves each negative threshold by
    4: ``audioop(x) == ours(x - 4)`` for every negative x (and identical for x >= 0)."""
    audioop = audioop_module()
    if audioop is None:
        pytest.skip("audioop is not in this Python (removed in 3.13)")
    raw = ALL_LINEAR.tobytes()  # native-endian 16-bit, what audioop reads
    assert np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), np.int16).tolist() == (
        g711.ULAW_DECODE.tolist()
    )
    assert np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), np.int16).tolist() == (
        g711.ALAW_DECODE.tolist()
    )
    assert audioop.lin2alaw(raw, 2) == g711.alaw_encode(ALL_LINEAR)
    theirs = np.frombuffer(audioop.lin2ulaw(raw, 2), np.uint8)
    ours = np.frombuffer(g711.ulaw_encode(ALL_LINEAR), np.uint8)
    x = ALL_LINEAR.astype(np.int32)
    assert (theirs[x >= 0] == ours[x >= 0]).all()
    shifted = (x[4:32768] - 4).astype(np.int16)  # x in -32764..-1
    assert (theirs[4:32768] == np.frombuffer(g711.ulaw_encode(shifted), np.uint8)).all()
    assert int((theirs != ours).sum()) == 508  # the thresholds that moved (and nothing else)
    assert audioop.lin2ulaw(struct.pack("=h", -1), 2) == b"\x7e"  # vs G.711's 0x7F
