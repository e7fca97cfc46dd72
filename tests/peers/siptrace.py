"""A SIP message as a softphone's log shows it, with the few accessors the tests read.

Logs can hold messages cut or oddly framed, so this reads the text leniently instead of
through ``telephony.sip.parser`` (which would reject them). The peers subclass it with where
the message went (:mod:`tests.peers.baresip`, :mod:`tests.peers.linphone`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LoggedSip:
    sent: bool  # True for what the softphone sent
    text: str

    @property
    def start_line(self) -> str:
        return self.text.split("\r\n", 1)[0].split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        """The request method, or ``None`` for a response."""
        first = self.start_line
        return None if first.startswith("SIP/2.0") else first.split(" ", 1)[0]

    @property
    def status(self) -> int | None:
        first = self.start_line
        return int(first.split(" ")[1]) if first.startswith("SIP/2.0 ") else None

    def header(self, name: str) -> str | None:
        head = self.text.split("\r\n\r\n", 1)[0]
        for line in head.splitlines()[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def body(self) -> str:
        parts = self.text.split("\r\n\r\n", 1)
        return parts[1] if len(parts) == 2 else ""

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None
