"""pyVoIP 1.6.8 as a dispatcher's softphone that registers with handoffd (a test peer only).

pyVoIP is GPLv3: it is installed by the ``interop`` dependency group (``make test`` syncs it) and
imported only here and by the tests that use this module, never by ``telephony/``. What it can
and cannot do against handoffd is in docs/decisions/0003-pyvoip.md.

:class:`PyVoipPhone` runs one ``pyVoIP.VoIP.VoIPPhone`` on 127.0.0.1:

- SIP on a free UDP port of its own (``sipPort``), registering with handoffd as a position's
  digest user (``REGISTER sip:127.0.0.1``, Contact ``sip:USER@127.0.0.1:PORT;transport=UDP``);
  pyVoIP answers challenges with MD5 and no ``qop``, so handoffd must have
  ``registrar.require_qop: false`` for it to register, and ``qualify_interval: 0`` (it cannot
  parse OPTIONS);
- RTP on a few consecutive free UDP ports (``rtpPortLow`` .. ``rtpPortHigh``);
- a call callback that answers every call (and hangs up after ``hangup_after`` seconds when
  asked) and records what the phone saw (:class:`SeenCall`): the INVITE as received, the codecs
  it took from the offer, where it sends RTP, whether audio arrived, whether the call ended.

pyVoIP is threaded and blocking: ``VoIPPhone.start`` sends REGISTER and waits for the answer
(up to ``register_timeout``), ``stop`` unregisters the same way. The daemon under test runs in
the test's event loop, so :meth:`PyVoipPhone.start` and :meth:`PyVoipPhone.stop` run those in a
worker thread (``asyncio.to_thread``), or the daemon could never answer. pyVoIP's threads are
``threading.Timer`` objects: "SIP Recieve" (sic), "SIP Register CSeq: N" (the refresh,
``expires - 5`` s after each registration), "Phone Call: CALL-ID" (our callback, one second after
the INVITE), "RTP Receiver" and "RTP Transmitter" per call. :meth:`PyVoipPhone.stop` joins every
one of them that appeared after :meth:`PyVoipPhone.start`, and raises if one outlives its
timeout.

Two things pyVoIP does that a test run must allow for:

- ``import audioop`` (Python 3.11 warns: deprecated, removed in 3.13; PEP 594) fails under the
  suite's ``filterwarnings = error``; the import below ignores exactly that warning.
- Its ``stop()`` closes the SIP socket while the "SIP Recieve" thread may be about to use it (an
  ``OSError`` in that thread); :meth:`PyVoipPhone.stop` lets that thread finish first. Its RTP
  sender warns ``RTP Packet failed to send!`` when a call's socket is closed under it at hang-up
  (pyVoIP's ``RTPClient.stop`` closes the socket without waiting for the thread): tests that
  hang calls up ignore that one warning.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from dataclasses import dataclass, field

from tests.peers.sipp import free_port, free_udp_range

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="'audioop' is deprecated", category=DeprecationWarning
    )
    import pyVoIP
    from pyVoIP.VoIP import CallState, PhoneStatus, VoIPCall, VoIPPhone

__all__ = ["VERSION", "PhoneStatus", "PyVoipPhone", "SeenCall", "free_udp_range"]

HOST = "127.0.0.1"
VERSION = pyVoIP.__version__
#: pyVoIP's decoded audio is 8-bit unsigned linear: a frame it has no packet for reads as 0x80s
SILENCE = b"\x80" * 160
_THREAD_NAMES = ("SIP Recieve", "SIP Register", "Phone Call:", "RTP Receiver", "RTP Transmitter")


@dataclass
class SeenCall:
    """What the phone saw of one incoming call (filled in by its call thread).

    ``invite``: the INVITE as pyVoIP received it; ``codecs``: the payload types pyVoIP took from
    the offer (number -> name, in the offer's order; the first audio one is what it sends);
    ``rtp_port``: where it receives RTP; ``rtp_target``: where it sends RTP (the offer's
    ``c=`` / ``m=``); ``audio_frames``: reads of pyVoIP's receive buffer (up to 160 bytes, every
    10 ms) that returned decoded audio rather than only silence padding; ``answered``: it sent
    its 200; ``hung_up``: it hung up itself (``hangup_after``); ``ended``: the call ended while
    the phone was still up (the far end's BYE, or its own); ``error``: what went wrong in the
    callback, if anything.
    """

    call_id: str
    invite: bytes
    codecs: dict[int, str] = field(default_factory=dict)
    rtp_port: int | None = None
    rtp_target: tuple[str, int] | None = None
    answered: bool = False
    hung_up: bool = False
    audio_frames: int = 0
    ended: bool = False
    error: str | None = None

    @property
    def request_line(self) -> str:
        return self.invite.split(b"\r\n", 1)[0].decode(errors="replace")


class PyVoipPhone:
    """One pyVoIP phone registering as ``username`` with the registrar at 127.0.0.1:``port``.

    ``avoid``: a port range its RTP ports must stay out of (handoffd's media ports);
    ``expires``: the registration time it asks for (pyVoIP's ``default_expires``, 120 s; it
    refreshes 5 s before the end); ``register_timeout``: how long it waits for each answer
    (pyVoIP's default is 30 s; shorter keeps a failing test short); ``max_call``: the longest a
    call thread stays in a call before it gives up; ``hangup_after``: seconds after answering at
    which the phone hangs up itself (pyVoIP's ``VoIPCall.hangup``, a BYE), None: never.
    """

    def __init__(
        self,
        *,
        port: int,
        username: str,
        password: str,
        sip_port: int | None = None,
        rtp_ports: int = 4,
        avoid: range = range(0),
        expires: int | None = None,
        register_timeout: int = 5,
        max_call: float = 30.0,
        hangup_after: float | None = None,
    ) -> None:
        self.sip_port = sip_port if sip_port is not None else free_port()
        self.username = username
        low = free_udp_range(rtp_ports, avoid=avoid)
        self.rtp_range = (low, low + rtp_ports - 1)
        self.max_call = max_call
        self.hangup_after = hangup_after
        self.calls: list[SeenCall] = []
        self._stopping = threading.Event()
        self._stopped = False
        self._before: set[threading.Thread] = set()
        self.phone = VoIPPhone(
            HOST,
            port,
            username,
            password,
            myIP=HOST,
            callCallback=self._on_call,
            sipPort=self.sip_port,
            rtpPortLow=low,
            rtpPortHigh=low + rtp_ports - 1,
        )
        if expires is not None:
            self.phone.sip.default_expires = expires
        self.phone.sip.register_timeout = register_timeout

    # -- state -----------------------------------------------------------------------------

    @property
    def status(self) -> PhoneStatus:
        return self.phone.get_status()

    @property
    def contact(self) -> str:
        """The Contact URI pyVoIP puts in its REGISTER."""
        return f"sip:{self.username}@{HOST}:{self.sip_port};transport=UDP"

    async def wait_status(self, status: PhoneStatus, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status is not status:
            if time.monotonic() > deadline:
                raise AssertionError(f"pyVoIP is {self.status.value}, not {status.value}")
            await asyncio.sleep(0.05)

    async def wait_calls(self, count: int, timeout: float = 10.0) -> list[SeenCall]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"pyVoIP saw {len(self.calls)} calls, not {count}")
            await asyncio.sleep(0.05)
        return list(self.calls)

    def threads(self) -> list[threading.Timer]:
        """pyVoIP's threads started since :meth:`start` that are still alive."""
        return [
            t
            for t in threading.enumerate()
            if t not in self._before
            and isinstance(t, threading.Timer)
            and t.name.startswith(_THREAD_NAMES)
        ]

    # -- start, stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the phone: it binds its SIP port and registers (pyVoIP's ``start`` returns
        after the first REGISTER exchange; a failed one is retried in the background until
        ``pyVoIP.REGISTER_FAILURE_THRESHOLD`` (3) failures, then the phone is FAILED)."""
        self._before = set(threading.enumerate())
        await asyncio.to_thread(self.phone.start)

    async def stop(self, timeout: float = 15.0) -> None:
        """Hang up calls, unregister (pyVoIP sends REGISTER with ``Expires: 0``), close sockets
        and join pyVoIP's threads; AssertionError if any is still alive after ``timeout``. A
        second call does nothing. (Stopped during a call, pyVoIP takes the 200 to its BYE for
        the answer to its REGISTER and leaves its binding: docs/decisions/0003-pyvoip.md.)"""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.to_thread(self._stop, timeout)

    def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._stopping.set()  # our call threads leave their loops
        sip = self.phone.sip
        if sip.NSD:
            # pyVoIP's stop() closes the socket while its receive thread may still touch it:
            # let that thread see NSD false and finish first, then stop for real
            sip.NSD = False
            for t in self.threads():
                if t.name == "SIP Recieve":
                    t.join(max(0.1, deadline - time.monotonic()))
            sip.NSD = True
        try:
            self.phone.stop()  # hangs up answered calls, unregisters, closes the SIP socket
        finally:  # even when unregistering raised (it re-raises socket errors)
            sip._close_sockets()  # closing again is harmless
            for t in self.threads():
                t.cancel()  # a refresh not yet due
                t.join(max(0.1, deadline - time.monotonic()))
        left = [t.name for t in self.threads()]
        assert not left, f"pyVoIP threads still running after {timeout} s: {left}"

    # -- the call thread -------------------------------------------------------------------

    def _on_call(self, call: VoIPCall) -> None:
        """pyVoIP's call callback (its own thread, one second after the INVITE): answer, then
        read audio until the call ends, the phone stops or ``max_call`` runs out."""
        seen = SeenCall(str(call.call_id), bytes(call.request.raw))
        self.calls.append(seen)
        try:
            for client in call.RTPClients:
                seen.codecs.update({pt: str(kind) for pt, kind in client.assoc.items()})
                seen.rtp_port = client.inPort
                seen.rtp_target = (client.outIP, client.outPort)
            call.answer()
            seen.answered = True
            start = time.monotonic()
            hangup = None if self.hangup_after is None else start + self.hangup_after
            while call.state is CallState.ANSWERED and time.monotonic() < start + self.max_call:
                if call.read_audio(160, blocking=False) != SILENCE:
                    seen.audio_frames += 1
                if hangup is not None and time.monotonic() >= hangup:
                    call.hangup()
                    seen.hung_up = True
                    break
                if self._stopping.wait(0.01):
                    break
            seen.ended = call.state is CallState.ENDED and not self._stopping.is_set()
        except Exception as err:  # recorded for the test to assert on, not lost in a thread
            seen.error = f"{type(err).__name__}: {err}"
