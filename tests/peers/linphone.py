"""A real linphone-daemon (Debian ``linphone-nogtk``) as a dispatcher's softphone, driven over its
command socket.

The binary ``/usr/bin/linphone-daemon`` comes from Debian's ``linphone-cli`` package, which the
``linphone-nogtk`` metapackage pulls in (``apt-get install --no-install-recommends
linphone-nogtk``; liblinphone 5.1.65 on Debian 12).

:class:`Linphone` writes a linphonerc into a working directory and starts
``linphone-daemon --config RC --pipe NAME --log LOG``:

- SIP on one free UDP port bound to 127.0.0.1 only (``[sip] bind_address``, ``sip_port``; TCP and
  TLS off: ``sip_tcp_port=0``, ``sip_tls_port=0``), identity ``sip:USER@127.0.0.1``, nothing to
  register with: a static position (``uri: sip:USER@127.0.0.1:PORT`` in handoffd's config).
- RTP on 127.0.0.1 in a small port range of its own (``[rtp] bind_address``, ``audio_rtp_port``),
  video off, G.711 (PCMU, PCMA) only, set with ``audio-codec-*`` commands once it runs.
- No sound card is needed: without one (a headless machine has none, ALSA reports nothing)
  liblinphone plays received audio to a null sink and captures nothing, so it sends no RTP of its
  own, only RTCP and STUN keepalives. :meth:`LinphoneControl.play` (``incall-player-start``)
  sends a WAV file into a call instead, e.g. a tone from :func:`write_tone_wav` (one that
  outlasts the call: the daemon crashes when the file ends).
- ``HOME`` is the working directory, so its databases (``~/.local/share/linphone``, which must
  exist or the core never starts its SIP stack) and ``~/.config`` stay there.

The command protocol (liblinphone ``daemon/daemon.cc``): a client connects to the unix socket
``/tmp/NAME`` (the daemon prefixes ``/tmp/``) and writes one command line, without a newline; the
daemon reads whatever one ``read()`` returns as one command, so a client sends one command and
waits for its answer before sending the next. The answer, written with one ``write()``, is
``Status: Ok|Error\\n``, then ``Reason: ...\\n`` on errors, then a blank line and a body of
``Key: value`` lines. Only one client at a time. While a client is connected, events (call state
changes, DTMF received) queue inside the daemon and come out one per ``pop-event`` command; with no
client they are printed to stdout. :class:`LinphoneControl` polls ``pop-event`` in the background.

Calls have small integer ids (1, 2, ...) in the order the daemon first saw them; ``call`` answers
with ``Id: N``, events carry ``Id: N`` and ``Event: LinphoneCall<State>`` (IncomingReceived,
OutgoingProgress, OutgoingRinging, Connected, StreamsRunning, Pausing, Paused, Resuming,
Referred, End, Released, Error).

``config-get`` of a key that is not set crashes linphone-daemon 5.1.65 (a ``std::string`` built
from NULL); do not use it.

Stopping: ``quit`` (SIGINT, the daemon's own quit, when the socket is not usable), then SIGKILL to
its process group after a grace period. The daemon runs under coreutils ``timeout`` (which passes
SIGINT on) so it stops by itself after ``quit_after`` seconds even if a test dies.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.sipp import free_port
from tests.peers.siptrace import LoggedSip

HOST = "127.0.0.1"


def linphone_binary() -> str:
    path = shutil.which("linphone-daemon")
    if path is None:
        raise RuntimeError(
            "linphone-daemon not found: install Debian's linphone-nogtk "
            "(apt-get install --no-install-recommends linphone-nogtk; the binary is in "
            "linphone-cli)"
        )
    return path


def linphone_version() -> str:
    """The Debian package version of linphone-cli (the daemon has no ``--version`` option; a
    running daemon answers the ``version`` command, see :meth:`LinphoneControl.version`)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "linphone-cli"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def write_tone_wav(path: Path, hz: float, seconds: float = 90.0, rate: int = 8000) -> Path:
    """A mono 16-bit WAV with a sine tone, for :meth:`LinphoneControl.play`. Make it outlast
    the call: linphone-daemon 5.1.65 crashes when a file it plays reaches its end."""
    samples = array.array(
        "h", (int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(rate))
    )
    if sys.byteorder != "little":
        samples.byteswap()
    second = samples.tobytes()  # an integral number of periods when hz is an integer
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(second * math.ceil(seconds))
    return path


class LinphoneError(RuntimeError):
    """A command answered ``Status: Error``."""


@dataclass(frozen=True)
class LinphoneResponse:
    """One answer: ``ok``, the ``Reason`` of an error and the body text."""

    ok: bool
    reason: str
    body: str

    @classmethod
    def parse(cls, text: str) -> LinphoneResponse:
        head, _, body = text.partition("\n\n")
        lines = head.splitlines()
        if not lines or not lines[0].startswith("Status: "):
            raise ValueError(f"not a linphone-daemon answer: {text[:200]!r}")
        ok = lines[0] == "Status: Ok"
        reason = ""
        for line in lines[1:]:
            if line.startswith("Reason: "):
                reason = line[len("Reason: ") :]
        return cls(ok, reason, body.strip("\n"))

    def get(self, key: str) -> str | None:
        """The value of the first ``key: value`` line of the body."""
        for line in self.body.splitlines():
            k, sep, v = line.partition(": ")
            if sep and k == key:
                return v
        return None


@dataclass(frozen=True)
class LinphoneEvent:
    """One queued event: ``type`` (``call-state-changed``, ``receiving-tone``, ...) and its
    ``Key: value`` fields (``Event``, ``From``, ``Id``, ``Tone``)."""

    type: str
    fields: dict[str, str]

    @property
    def call_id(self) -> int | None:
        v = self.fields.get("Id")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def state(self) -> str | None:
        """``IncomingReceived``, ``StreamsRunning``, ``End``, ... (without ``LinphoneCall``)."""
        v = self.fields.get("Event")
        return v.removeprefix("LinphoneCall") if v is not None else None

    def __str__(self) -> str:
        return f"{self.call_id}:{self.state or self.type}"


def _parse_event(body: str) -> LinphoneEvent | None:
    """The event in a ``pop-event`` body (``Size: N``, blank line, ``Event-type: T``, blank line,
    fields), or None when the queue was empty."""
    etype: str | None = None
    fields: dict[str, str] = {}
    for line in body.splitlines():
        k, sep, v = line.partition(": ")
        if not sep:
            continue
        if k == "Event-type":
            etype = v
        elif k != "Size":
            fields.setdefault(k, v)
    return LinphoneEvent(etype, fields) if etype is not None else None


@dataclass
class LinphoneControl:
    """The command connection: :meth:`command` runs one command at a time; a background task
    pops events into :attr:`events`."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    poll_interval: float = 0.05
    events: list[LinphoneEvent] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _poller: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _poll_error: BaseException | None = None

    def start_polling(self) -> None:
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while not self._stop.is_set():
                res = await self.command("pop-event")
                ev = _parse_event(res.body)
                if ev is not None:
                    self.events.append(ev)
                    self._changed.set()
                if ev is None or res.get("Size") == "0":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.poll_interval)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            self._poll_error = exc
            self._changed.set()

    async def command(self, line: str, timeout: float = 5.0) -> LinphoneResponse:
        """Send one command and return its answer (``Status: Error`` is returned, not raised)."""
        async with self._lock:
            self.writer.write(line.encode())
            await self.writer.drain()
            buf = b""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            # one answer is one write(): normally one read; read on until it parses
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(f"linphone-daemon did not answer {line!r}: {buf!r}")
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
                if not chunk:
                    raise ConnectionError(f"linphone-daemon closed the socket on {line!r}")
                buf += chunk
                text = buf.decode(errors="replace")
                if text.endswith("\n"):
                    return LinphoneResponse.parse(text)

    async def ok(self, line: str, timeout: float = 5.0) -> LinphoneResponse:
        """:meth:`command`, raising :class:`LinphoneError` on ``Status: Error``."""
        res = await self.command(line, timeout)
        if not res.ok:
            raise LinphoneError(f"{line!r}: {res.reason or res.body}")
        return res

    async def version(self) -> str:
        return (await self.ok("version")).get("Version") or "unknown"

    async def call(self, uri: str) -> int:
        """Place a call; returns its id."""
        res = await self.ok(f"call {uri}")
        cid = res.get("Id")
        if cid is None or not cid.isdigit():
            raise LinphoneError(f"call {uri}: no Id in {res.body!r}")
        return int(cid)

    async def answer(self, call_id: int) -> None:
        await self.ok(f"answer {call_id}")

    async def pause(self, call_id: int) -> None:
        await self.ok(f"call-pause {call_id}")

    async def resume(self, call_id: int) -> None:
        await self.ok(f"call-resume {call_id}")

    async def transfer(self, call_id: int, to: int | str) -> None:
        """``call-transfer``: to another call's id (attended: REFER with Replaces on
        ``call_id``'s dialog) or to a SIP URI (blind)."""
        await self.ok(f"call-transfer {call_id} {to}")

    async def terminate(self, call_id: int) -> None:
        await self.ok(f"terminate {call_id}")

    async def play(self, call_id: int, wav: Path) -> None:
        """Send a WAV file into the call (``incall-player-start``) in place of a microphone.

        The file must last longer than the call: in linphone-daemon 5.1.65 the player's
        end-of-file callback dereferences NULL and the daemon dies (SIGSEGV)."""
        await self.ok(f"incall-player-start {wav} {call_id}")

    async def call_state(self, call_id: int) -> str | None:
        """``StreamsRunning``, ``Paused``, ...; None when there is no such call (any more)."""
        res = await self.command(f"call-status {call_id}")
        state = res.get("State") if res.ok else None
        return state.removeprefix("LinphoneCall") if state else None

    async def wait_event(
        self, state: str, call_id: int | None = None, timeout: float = 10.0
    ) -> LinphoneEvent:
        """The first call event (seen so far or arriving) in ``state`` (``IncomingReceived``,
        ``StreamsRunning``, ``End``, ...), for ``call_id`` if given."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for ev in self.events:
                if ev.state == state and (call_id is None or ev.call_id == call_id):
                    return ev
            if self._poll_error is not None:
                raise ConnectionError(f"event polling stopped: {self._poll_error!r}")
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {state} event within {timeout} s: {self.summary()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def states(self, call_id: int) -> list[str]:
        return [ev.state or ev.type for ev in self.events if ev.call_id == call_id]

    def summary(self) -> str:
        return " ".join(map(str, self.events))

    async def stop_polling(self) -> None:
        """Let the poller finish its command (a cancel mid-command would leave its answer for
        the next command to read)."""
        self._stop.set()
        if self._poller is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._poller), 6.0)
            except TimeoutError:
                self._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._poller
            self._poller = None

    async def quit(self) -> None:
        """Stop polling and send ``quit`` (the daemon answers, then ends its calls and exits)."""
        await self.stop_polling()
        await self.command("quit", timeout=3.0)

    async def close(self) -> None:
        await self.stop_polling()
        async with self._lock:  # a command cut short by a cancel has let go of the socket
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


@dataclass(frozen=True, kw_only=True)
class SipMessage(LoggedSip):
    """One SIP message linphone sent (``sent``) to, or received from, ``peer`` (host:port)."""

    peer: str

    def __str__(self) -> str:
        return f"{'>' if self.sent else '<'} {self.peer} {self.start_line}"


# belle-sip logs every message it sends or receives, with its size, then the raw bytes
_SIP_LOG = re.compile(
    rb"channel \[0x[0-9a-f]+\]: (?:message sent to \[\w+://([^\]]+)\], size: \[(\d+)\] bytes"
    rb"|received \[(\d+)\] new bytes from \[\w+://([^\]]+)\]:)\n"
)

_RTP_STATS = re.compile(
    r"AUDIO SESSION'S RTP STATISTICS.*?sent\s+(\d+) packets.*?received\s+(\d+) packets", re.S
)


class Linphone:
    """A linphone-daemon process with a generated linphonerc under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str = "linphone",
        sip_port: int | None = None,
        auto_answer: bool = False,
        quit_after: int = 120,
    ) -> None:
        self.workdir = workdir
        self.user = user
        self.sip_port = sip_port or free_port()
        self.rtp_base = free_port() & ~1
        if self.rtp_base + 40 > 65000:
            self.rtp_base = 30000
        self.auto_answer = auto_answer
        self.quit_after = quit_after
        self.rc_path = workdir / "linphonerc"
        self.log_path = workdir / "linphone.log"
        self.stdout_path = workdir / "stdout.txt"
        # the daemon puts its socket at /tmp/<name>; keep the name short and unique
        self.pipe_name = f"handoff-linphone-{os.getpid()}-{self.sip_port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.control: LinphoneControl | None = None

    @property
    def uri(self) -> str:
        """Where to send calls for this phone (a static position's ``uri``)."""
        return f"sip:{self.user}@{HOST}:{self.sip_port}"

    @property
    def pipe_path(self) -> Path:
        return Path("/tmp") / self.pipe_name

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # the core does not start its SIP stack when it cannot open its database here
        (self.workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.rc_path.write_text(
            f"""[sip]
sip_port={self.sip_port}
sip_tcp_port=0
sip_tls_port=0
bind_address={HOST}
use_ipv6=0
contact=sip:{self.user}@{HOST}
guess_hostname=0
register_only_when_network_is_up=0
ping_with_options=0
auto_send_ringing=1
inc_timeout=60
in_call_timeout=0
media_encryption=none

[rtp]
audio_rtp_port={self.rtp_base}-{self.rtp_base + 39}
bind_address={HOST}
nortp_timeout=60

[sound]
echocancellation=0

[video]
enabled=0
capture=0
display=0
automatically_initiate=0
automatically_accept=0
"""
        )
        return self.rc_path

    async def start(self, timeout: float = 10.0) -> LinphoneControl:
        """Start the daemon, connect to its socket, leave only PCMU and PCMA enabled and start
        polling events."""
        binary = linphone_binary()
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.pipe_path.unlink()
        args = [
            binary,
            "--config",
            str(self.rc_path),
            "--pipe",
            self.pipe_name,
            "--log",
            str(self.log_path),
            "--disable-stats-events",
        ]
        if self.auto_answer:
            args.append("--auto-answer")
        timeout_bin = shutil.which("timeout")
        if timeout_bin is not None:  # coreutils: SIGINT (the daemon's quit) after quit_after s
            args = [timeout_bin, "-s", "INT", "-k", "5", str(self.quit_after), *args]
        env = dict(os.environ, HOME=str(self.workdir))
        with self.stdout_path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so that stop() can kill timeout and the daemon
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"linphone-daemon exited with {self.proc.returncode}:\n{self.output()[-2000:]}"
                )
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.pipe_path))
                break
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise RuntimeError(
                        f"linphone-daemon did not open {self.pipe_path}:\n{self.output()[-2000:]}"
                    ) from None
                await asyncio.sleep(0.05)
        self.control = LinphoneControl(reader, writer)
        try:
            port = await self.control.ok("port sip")
            if str(self.sip_port) not in port.body:
                raise RuntimeError(f"linphone-daemon SIP port: {port.body!r}")
            await self.control.ok("audio-codec-disable ALL")
            await self.control.ok("audio-codec-enable PCMU/8000/1")
            await self.control.ok("audio-codec-enable PCMA/8000/1")
            await self._wait_listening(deadline)
        except BaseException:
            await self.stop()
            raise
        self.control.start_polling()
        return self.control

    async def _wait_listening(self, deadline: float) -> None:
        """The SIP socket opens once the core has started (after ``port`` already answers)."""
        loop = asyncio.get_running_loop()
        suffix = f":{self.sip_port:04X}"  # /proc/net/udp local_address: 0100007F:13C4
        while True:
            rows = [line.split() for line in Path("/proc/net/udp").read_text().splitlines()[1:]]
            if any(len(r) > 1 and r[1].endswith(suffix) for r in rows):
                return
            if loop.time() > deadline:
                raise RuntimeError(
                    f"linphone-daemon does not listen on UDP {self.sip_port}:\n{self.log()[-2000:]}"
                )
            await asyncio.sleep(0.05)

    async def stop(self, grace: float = 5.0) -> int | None:
        """``quit`` (or SIGINT, the daemon's own quit, when the socket is not usable), then
        SIGKILL to the process group (``timeout`` and the daemon) after ``grace`` seconds;
        returns the exit status."""
        proc = self.proc
        quitted = False
        if self.control is not None:
            control, self.control = self.control, None
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(OSError, TimeoutError, ConnectionError, ValueError):
                    await control.quit()
                    quitted = True
            await control.close()
        if proc is not None and proc.returncode is None:
            if not quitted:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)  # coreutils timeout passes it on
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: start_new_session
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pipe_path.unlink()
        return proc.returncode if proc is not None else None

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def log(self) -> str:
        """liblinphone's log (complete only after :meth:`stop`: the daemon buffers it)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sip_trace(self) -> list[SipMessage]:
        """Every SIP message linphone sent or received, in order, from its log (complete after
        :meth:`stop`)."""
        raw = self.log_path.read_bytes() if self.log_path.exists() else b""
        out: list[SipMessage] = []
        for m in _SIP_LOG.finditer(raw):
            sent = m.group(1) is not None
            peer = (m.group(1) if sent else m.group(4)).decode()
            size = int(m.group(2) if sent else m.group(3))
            text = raw[m.end() : m.end() + size].decode(errors="replace")
            out.append(SipMessage(sent=sent, peer=peer, text=text))
        return out

    def rtp_stats(self) -> list[tuple[int, int]]:
        """(sent, received) RTP packets of every audio stream that ended, from the log."""
        return [(int(s), int(r)) for s, r in _RTP_STATS.findall(self.log())]
