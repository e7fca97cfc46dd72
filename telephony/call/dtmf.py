"""Feature codes keyed by the dispatcher (e.g. ``*8`` warm, ``*9`` cold, ``#`` cancel), sans-IO.

The media layer turns the dispatcher's RFC 4733 telephone-events into keys
(:mod:`telephony.media.dtmf`); a phone that negotiated no telephone-event may send its keys as
SIP INFO instead (:func:`parse_dtmf_info`). :class:`FeatureCodes` collects them per call and
says which feature, if any, a key completes. The codes are prefix-free (the config reader
checks), so a code is recognised the moment its last key arrives, with no wait. Keys that cannot
start or continue a code are dropped from the front, so ``5*8`` still gives ``*8``; more than
``digit_timeout`` seconds between two keys starts over.
"""

from __future__ import annotations

from collections.abc import Mapping

#: the keys a code is made of; Signal=10 and 11 are * and # (the event numbers of RFC 4733)
_KEYS = "0123456789*#ABCD"


def parse_dtmf_info(content_type: str | None, body: bytes) -> str | None:
    """The key a SIP INFO carries, or None: ``application/dtmf-relay`` (``Signal=5`` and a
    ``Duration=`` line, the de facto format of desk phones) or ``application/dtmf`` (the key
    alone). Case and white space are tolerated; anything else is not a key."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    text = body.decode("ascii", "replace").strip()
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                text = value.strip()
                break
        else:
            return None
    elif ctype != "application/dtmf":
        return None
    if text in ("10", "11"):
        return "*" if text == "10" else "#"
    key = text.upper()
    return key if len(key) == 1 and key in _KEYS else None


class FeatureCodes:
    def __init__(self, codes: Mapping[str, str], digit_timeout: float) -> None:
        self.codes = dict(codes)  # code -> action
        self.digit_timeout = digit_timeout
        self._keys = ""
        self._last: float | None = None

    def feed(self, key: str, now: float) -> str | None:
        """The action ``key`` (pressed at ``now``) completes, else None."""
        if self._last is not None and now - self._last > self.digit_timeout:
            self._keys = ""
        self._last = now
        keys = self._keys + key
        while keys and not any(code.startswith(keys) for code in self.codes):
            keys = keys[1:]
        action = self.codes.get(keys)
        self._keys = "" if action is not None else keys
        return action
