"""A real baresip (Debian ``baresip-core``) as a dispatcher's softphone, driven over ``ctrl_tcp``.

:class:`Baresip` writes a config directory for ``baresip -f DIR`` (SIP on a free 127.0.0.1 UDP
port, one account that auto-answers, G.711 only, a sine tone as microphone and no player, so no
sound card is needed; ``ctrl_tcp`` on another free port; ``menu`` for the long commands ``accept``,
``hangup``, ``transfer``, ``listcalls``), starts it with SIP tracing (``-s``) into a log file and
connects a :class:`BaresipControl`.

The control protocol (baresip ``modules/ctrl_tcp``): netstrings (``<length>:<bytes>,``) carrying
JSON. A command is ``{"command": NAME, "params": TEXT, "token": T}``; the answer is
``{"response": true, "ok": BOOL, "data": TEXT, "token": T}``; user-agent events arrive unasked as
``{"event": true, "class": "call", "type": "CALL_CLOSED", "param": ..., "id": CALL_ID, ...}``.
ctrl_tcp serves one connection at a time (a new one replaces the old).

baresip stops by itself after ``quit_after`` seconds (``-t``) even if a test dies; :meth:`stop`
sends SIGTERM (baresip then ends its calls and waits for their transactions) and kills after a
grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.sipp import free_port
from tests.peers.siptrace import LoggedSip

MODULE_DIRS = (
    Path("/usr/lib/baresip/modules"),
    Path("/usr/local/lib/baresip/modules"),
    Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
)
MODULES = ("g711", "ausine", "account", "menu", "ctrl_tcp")
HOST = "127.0.0.1"


def baresip_binary() -> str:
    path = shutil.which("baresip")
    if path is None:
        raise RuntimeError(
            "baresip not found: install Debian's baresip-core "
            "(apt-get install --no-install-recommends baresip-core)"
        )
    return path


def module_dir() -> Path:
    """The directory holding every module in :data:`MODULES`."""
    for d in MODULE_DIRS:
        if all((d / f"{m}.so").exists() for m in MODULES):
            return d
    raise RuntimeError(
        f"baresip modules {', '.join(MODULES)} not found in any of "
        f"{', '.join(map(str, MODULE_DIRS))} (Debian baresip-core ships them)"
    )


def baresip_version() -> str:
    """``baresip -h`` prints its version on the first line (``baresip v1.0.0 Copyright ...``)."""
    out = subprocess.run(
        [baresip_binary(), "-h"], capture_output=True, text=True, timeout=10, check=False
    )
    m = re.search(r"baresip v(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Splits a byte stream into netstring payloads."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while True:
            colon = self.buf.find(b":")
            if colon < 0:
                if len(self.buf) > 10 or (self.buf and not self.buf.isdigit()):
                    raise ValueError(f"bad netstring header: {self.buf[:20]!r}")
                return out
            head = self.buf[:colon]
            if not head.isdigit():
                raise ValueError(f"bad netstring length: {head[:20]!r}")
            n = int(head)
            end = colon + 1 + n
            if len(self.buf) < end + 1:
                return out
            if self.buf[end : end + 1] != b",":
                raise ValueError("netstring without its trailing comma")
            out.append(self.buf[colon + 1 : end])
            self.buf = self.buf[end + 1 :]


@dataclass
class BaresipControl:
    """One ctrl_tcp connection: commands with their responses, and the events as they come."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    events: list[dict[str, Any]] = field(default_factory=list)
    _pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        decoder = NetstringDecoder()
        try:
            while data := await self.reader.read(65536):
                for payload in decoder.feed(data):
                    msg = json.loads(payload)
                    if msg.get("response"):
                        fut = self._pending.pop(str(msg.get("token")), None)
                        if fut is not None and not fut.done():
                            fut.set_result(msg)
                    elif msg.get("event"):
                        self.events.append(msg)
                        self._changed.set()
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("ctrl_tcp connection closed"))
            self._changed.set()

    async def command(
        self, name: str, params: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Run a baresip command; returns the response (``ok``, ``data``)."""
        token = str(next(self._tokens))
        msg: dict[str, str] = {"command": name, "token": token}
        if params is not None:
            msg["params"] = params
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        self.writer.write(netstring(json.dumps(msg).encode()))
        await self.writer.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(token, None)

    async def wait_event(
        self, type_: str | tuple[str, ...], timeout: float = 10.0, *, param: str | None = None
    ) -> dict[str, Any]:
        """The first event (seen so far or arriving) of ``type_`` (e.g. ``CALL_ESTABLISHED``; a
        tuple for names that differ between baresip versions), optionally with ``param`` equal
        to the given text."""
        types = (type_,) if isinstance(type_, str) else type_
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for ev in self.events:
                if ev.get("type") in types and (param is None or ev.get("param") == param):
                    return ev
            if self._task is not None and self._task.done():
                raise ConnectionError(f"ctrl_tcp closed before {type_}: {self.event_types()}")
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {type_} event within {timeout} s: {self.event_types()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def event_types(self) -> list[str]:
        return [str(ev.get("type")) for ev in self.events]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


@dataclass(frozen=True, kw_only=True)
class TracedMessage(LoggedSip):
    """One SIP message from baresip's ``-s`` trace: ``sent`` is True for what baresip sent."""

    src: str
    dst: str


_TRACE = re.compile(r"\x1b\[36;1m#\n(\w+) (\S+) -> (\S+)\n(.*?)\x1b\[;m", re.S)


class Baresip:
    """A baresip process with a generated config directory under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        user: str = "disp1",
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        answermode: str = "auto",
        tone_hz: int = 440,
        quit_after: int = 120,
    ) -> None:
        self.workdir = workdir
        self.user = user
        self.sip_port = sip_port or free_port()
        self.ctrl_port = ctrl_port or free_port(socket.SOCK_STREAM)
        self.answermode = answermode
        self.tone_hz = tone_hz
        self.quit_after = quit_after
        self.log_path = workdir / "baresip.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.control: BaresipControl | None = None

    @property
    def uri(self) -> str:
        """Where to send calls for this phone (a static position's ``uri``)."""
        return f"sip:{self.user}@{HOST}:{self.sip_port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        modules = module_dir()
        (self.workdir / "config").write_text(
            f"""poll_method\tepoll
sip_listen\t{HOST}:{self.sip_port}
net_interface\t{HOST}
call_local_timeout\t30
call_max_calls\t4
audio_source\tausine,{self.tone_hz}
ausrc_srate\t48000
ausrc_channels\t2
audio_buffer\t20-160
jitter_buffer_delay\t1-10
rtcp_mux\tno
statmode_default\toff
module_path\t{modules}
module\tg711.so
module\tausine.so
module_tmp\taccount.so
module_app\tmenu.so
module_app\tctrl_tcp.so
ctrl_tcp_listen\t{HOST}:{self.ctrl_port}
"""
        )
        # regint=0: a static position, nothing to register with; G.711 is all handoffd relays
        (self.workdir / "accounts").write_text(
            f"<sip:{self.user}@{HOST}>;answermode={self.answermode};regint=0;"
            "audio_codecs=pcmu,pcma\n"
        )
        (self.workdir / "contacts").write_text("")
        return self.workdir

    async def start(self, timeout: float = 10.0) -> BaresipControl:
        """Start baresip and connect to its ctrl_tcp; SIP listens once ctrl_tcp does."""
        binary = baresip_binary()
        self.write_config()
        args = [binary, "-f", str(self.workdir), "-v", "-s", "-t", str(self.quit_after)]
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"baresip exited with {self.proc.returncode}:\n{self.log()[-2000:]}"
                )
            try:
                reader, writer = await asyncio.open_connection(HOST, self.ctrl_port)
                break
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise RuntimeError(
                        f"baresip ctrl_tcp did not listen on {self.ctrl_port}:\n"
                        f"{self.log()[-2000:]}"
                    ) from None
                await asyncio.sleep(0.05)
        self.control = BaresipControl(reader, writer)
        res = await self.control.command("listcalls")
        if not res.get("ok"):
            raise RuntimeError(f"baresip ctrl_tcp answered {res}")
        return self.control

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
        if self.control is not None:
            await self.control.close()
            self.control = None
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sip_trace(self, *, retransmissions: bool = False) -> list[TracedMessage]:
        """The SIP messages baresip sent and received, in order, from its ``-s`` trace.

        A received message is traced with the peer as source, a sent one with baresip's own
        address as source. baresip writes its log through stdio, so the trace is only known
        complete after :meth:`stop`. UDP retransmissions (same direction, start line, Call-ID,
        CSeq and top Via as an earlier message) are left out unless ``retransmissions``."""
        me = f"{HOST}:{self.sip_port}"
        out: list[TracedMessage] = []
        seen: set[tuple[object, ...]] = set()
        for _tp, src, dst, text in _TRACE.findall(self.log()):
            crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
            msg = TracedMessage(sent=src == me, src=src, dst=dst, text=crlf)
            key = (msg.sent, msg.start_line, *(msg.header(h) for h in ("Call-ID", "CSeq", "Via")))
            if retransmissions or key not in seen:
                out.append(msg)
            seen.add(key)
        return out
