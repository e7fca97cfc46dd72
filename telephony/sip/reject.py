"""Answers to requests we could not parse (RFC 3261 §8.2, §21.4.1).

A malformed request still deserves a 400 (or 505, 413, 414, 416: whatever its :class:`ParseError`
says) when the peer can be told: that needs its Via, From, To, Call-ID and CSeq lines, which we read
here as raw text without trusting the rest of the message. Malformed responses are never answered.
"""

from __future__ import annotations

from telephony.sip.errors import ParseError
from telephony.sip.headers import canonical
from telephony.sip.message import reason_phrase

_ECHO = ("via", "from", "to", "call-id", "cseq")
_MAX_REASON = 80


def reject_malformed(data: bytes, error: ParseError) -> bytes | None:
    """Bytes of a stateless error response to malformed ``data``, or None when none is possible
    (a response, not SIP at all, or the headers needed to address an answer are missing)."""
    head = data.split(b"\r\n\r\n", 1)[0][:16384]
    try:
        text = head.decode("utf-8", "strict")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    parts = start.split(" ")
    if (
        len(parts) != 3
        or not parts[2].upper().startswith("SIP/")
        or start.upper().startswith("SIP/")
    ):
        return None
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            continue  # folded continuations are not needed for an answer
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = canonical(name.strip())
        if key in _ECHO and value.strip() and "\r" not in value:
            found.setdefault(key, []).append(value.strip())
    if any(k not in found for k in _ECHO):
        return None
    if parts[0].upper() == "ACK":
        return None  # ACKs are never answered (RFC 3261 §17.2.3)
    status = error.status if 300 <= error.status <= 699 else 400
    reason = "".join(c for c in error.reason if c.isprintable())[:_MAX_REASON]
    out = [f"SIP/2.0 {status} {reason_phrase(status)}"]
    out += [f"Via: {v}" for v in found["via"]]
    to = found["to"][0]
    if ";tag=" not in to.replace(" ", "").lower():
        to += ";tag=malformed"
    out += [
        f"From: {found['from'][0]}",
        f"To: {to}",
        f"Call-ID: {found['call-id'][0]}",
        f"CSeq: {found['cseq'][0]}",
        f'Warning: 399 handoffd "{reason}"',
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(out).encode("utf-8", "replace")
