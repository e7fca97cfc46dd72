"""The ``handoffd`` command as an operator runs it: startup time, /healthz, SIGHUP reload (a bad
rule file keeps the running rules), SIGTERM drain (new INVITEs get 503 + Retry-After)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import TOKEN, Ports, write_setup

HANDOFFD = Path(sys.executable).with_name("handoffd")


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _post(url: str, token: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=b"{}", method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


async def _wait_healthy(base: str, proc: asyncio.subprocess.Process, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.returncode is not None:
            raise AssertionError("handoffd exited during startup")
        try:
            status, _ = await asyncio.to_thread(_get, f"{base}/healthz")
            if status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"not healthy within {limit} s")


def _request(sock: socket.socket, port: int, method: str, user: str) -> None:
    me = sock.getsockname()[1]
    body = (
        b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\n"
    )
    msg = (
        f"{method} sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{time.monotonic_ns()}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=abc\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: {time.monotonic_ns()}@t\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:{me}>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock.sendto(msg, ("127.0.0.1", port))


def _options_or_invite(port: int, method: str, user: str = "disp-1") -> bytes:
    """Send one request and return the first non-100 answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.bind(("127.0.0.1", 0))
    try:
        _request(sock, port, method, user)
        while True:
            data = sock.recv(65535)
            if not data.startswith(b"SIP/2.0 100 "):
                return data
    finally:
        sock.close()


@pytest.mark.asyncio
async def test_startup_health_reload_and_drain(tmp_path: Path) -> None:
    ports = Ports()
    config = write_setup(tmp_path / "etc", ports)
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(HANDOFFD),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{ports.http}"
    try:
        await _wait_healthy(base, proc, 10)
        startup = time.monotonic() - t0
        # the issue asks for startup under one second: measured by bench/startup.py (median
        # 0.8 s here with compiled bytecode); a loaded CI machine running tests gets 3
        assert startup < 3.0, f"startup took {startup:.2f} s"

        status, body = await asyncio.to_thread(_post, f"{base}/v1/admin/reload", TOKEN)
        assert status == 200 and body["rules"] == 1

        rule = tmp_path / "etc" / "rules" / "50-bad.yaml"
        rule.write_text("rules:\n  - name: broken\n    chain: [no-such-destination]\n")
        status, body = await asyncio.to_thread(_post, f"{base}/v1/admin/reload", TOKEN)
        assert status == 422
        assert "50-bad.yaml:" in json.dumps(body)
        proc.send_signal(signal.SIGHUP)  # logged and refused; the daemon keeps serving
        await asyncio.sleep(0.3)
        assert proc.returncode is None
        rule.unlink()

        reply = await asyncio.to_thread(_options_or_invite, ports.sip, "OPTIONS")
        assert reply.startswith(b"SIP/2.0 200 ")

        # a call in progress (the position never answers: nothing listens there) ...
        ringing = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ringing.bind(("127.0.0.1", 0))
        _request(ringing, ports.sip, "INVITE", "disp-1")
        await asyncio.sleep(0.3)
        # ... so SIGTERM drains instead of stopping: new calls get 503 + Retry-After
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        reply = await asyncio.to_thread(_options_or_invite, ports.sip, "INVITE")
        assert reply.startswith(b"SIP/2.0 503 "), reply[:200]
        assert b"Retry-After: 7" in reply
        assert proc.returncode is None  # still draining
        # the ringing call ends at the position ring timeout (5 s), within the drain timeout
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
        ringing.settimeout(1)
        finals = []
        try:
            while True:
                data = ringing.recv(65535)
                finals.append(data.split(b"\r\n", 1)[0])
        except TimeoutError:
            pass
        ringing.close()
        assert any(f.startswith(b"SIP/2.0 408") or f.startswith(b"SIP/2.0 480") for f in finals), (
            finals
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "+18055550123" not in err


@pytest.mark.asyncio
async def test_a_port_in_use_fails_the_start_and_closes_what_was_opened(tmp_path: Path) -> None:
    """SIP listens on UDP and TCP of one port; another program holds the TCP one. The start
    fails with the OS error, and the UDP socket it had bound is closed again (not leaked)."""
    from telephony.config import load_config  # noqa: PLC0415
    from telephony.daemon import Daemon  # noqa: PLC0415

    ports = Ports()
    config = load_config(write_setup(tmp_path / "etc", ports))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", ports.sip))
        holder.listen()
        daemon = Daemon(config)
        with pytest.raises(OSError, match="address already in use"):
            await daemon.start()
    assert not daemon.ready
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", ports.sip))  # raises if the daemon's UDP socket were still open
