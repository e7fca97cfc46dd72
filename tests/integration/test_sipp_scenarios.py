"""The SIPp scenarios of ``sipp_scenarios/`` proven against each other, without handoffd.

Each test pairs two real SIPp processes on free 127.0.0.1 ports (``tests/peers/sipp.py``): one of
the scenarios the end-to-end tests use, and either another of them or a stand-in for handoffd from
``sipp_scenarios/selftest/``. The tests check what the end-to-end tests will rely on: the regexp
checks pass for a conforming INVITE and fail (the call counts as failed, SIPp exits 1) for each
kind of violation; failures, abandonment, hold and hang-up end with the documented counters and
exit codes; G.711 audio played by the caller reaches the 988 side and comes back (``-rtp_echo``).
One test plays handoffd's part in Python and parses the 911 caller's INVITE with telephony.sip.
A missing sipp binary fails these tests, as in test_sipp_interop.py.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from telephony.sip.message import Request, make_response
from telephony.sip.parser import parse_message
from telephony.sip.sdp import codecs, parse_sdp
from tests.peers.sipp import SCENARIOS, SippResult, free_port, start_sipp

pytestmark = [pytest.mark.asyncio, pytest.mark.sipp]

DATA = SCENARIOS / "data"
CALLER_CSV = str(DATA / "911-caller.csv")
SIPP_TIMEOUT_S = 12


@dataclass
class Pair:
    uas: SippResult
    uac: SippResult
    workdir: Path

    def logs(self, scenario: str) -> str:
        """The -trace_logs output (``<log>`` actions) of ``scenario``."""
        name = Path(scenario).name
        return "".join(p.read_text() for p in self.workdir.rglob(f"{name}_*_logs.log"))


def _ok(result: SippResult) -> str:
    return result.stdout[-2500:] + result.stderr[-1500:]


def _media_port() -> int:
    """A port for ``-mp``: SIPp binds it and port + 2 (video)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 2))
        except OSError:
            continue
        return port
    raise RuntimeError("no free media port pair")


def _udp_rx_queue(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:``port``."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16)
    return 0


async def _pair(
    tmp: Path,
    uas: str,
    uac: str,
    *,
    uas_extra: tuple[str, ...] = (),
    uac_extra: tuple[str, ...] = (),
    service: str = "988",
    watch_port: int | None = None,
) -> tuple[Pair, int]:
    """Run scenario ``uas`` and then ``uac`` calling it once; both must exit by themselves.

    Returns the results and, when ``watch_port`` is given, the largest receive queue (bytes)
    seen on that UDP port while the caller ran."""
    work = tmp / f"{Path(uas).name}--{Path(uac).name}"
    (work / "selftest").mkdir(parents=True)
    uas_port = free_port()
    uas_run = await start_sipp(
        uas, workdir=work, local_port=uas_port, timeout_s=SIPP_TIMEOUT_S, extra=uas_extra
    )
    await asyncio.sleep(0.3)  # let it bind
    uac_run = await start_sipp(
        uac,
        workdir=work,
        local_port=free_port(),
        remote=f"127.0.0.1:{uas_port}",
        service=service,
        timeout_s=SIPP_TIMEOUT_S,
        extra=("-trace_logs", *uac_extra),
    )
    peak = 0
    try:
        if watch_port is not None:
            while uac_run.proc.returncode is None:
                peak = max(peak, _udp_rx_queue(watch_port))
                await asyncio.sleep(0.1)
        uac_res = await uac_run.wait(timeout=SIPP_TIMEOUT_S + 5)
        uas_res = await uas_run.wait(timeout=SIPP_TIMEOUT_S + 5)
    finally:
        uac_run.kill()
        uas_run.kill()
    return Pair(uas_res, uac_res, work), peak


# -- 988 destinations -----------------------------------------------------------------------------


async def test_988_answer_accepts_the_reference_leg_and_echoes_its_audio(tmp_path: Path) -> None:
    media, control_media = _media_port(), _media_port()
    (pair, echoed), (control, not_echoed) = await asyncio.gather(
        _pair(
            tmp_path / "echo",
            "uas-988-answer",
            "selftest/uac-988-leg",
            uas_extra=("-rtp_echo",),
            uac_extra=("-d", "1500", "-mp", str(media)),
            watch_port=media,
        ),
        _pair(
            tmp_path / "no-echo",
            "uas-988-answer",
            "selftest/uac-988-leg",
            uac_extra=("-d", "1500", "-mp", str(control_media)),
            watch_port=control_media,
        ),
    )
    for p in (pair, control):
        assert p.uas.returncode == 0, _ok(p.uas)
        assert p.uac.returncode == 0, _ok(p.uac)
        assert p.uas.count("SuccessfulCall(C)") == 1
        assert p.uas.count("Bye(C)") == 1
    # the caller plays g711a.pcap at the 988 answer's SDP address; with -rtp_echo SIPp there sends
    # every packet back to the caller's media port, where nobody reads: what queues up there
    # proves the round trip (without -rtp_echo nothing comes back)
    assert echoed >= 10 * 200, echoed  # at least ~10 RTP packets (172 bytes + overhead each)
    assert not_echoed == 0


MUTATIONS = {
    # name: (old text of selftest/uac-988-leg.xml, new text, failure counter of uas-988-answer)
    "geolocation present": (
        "      X-Triage-Level: 1\n",
        "      X-Triage-Level: 1\n      Geolocation: <cid:loc-1@psap.example.org>\n",
        "FailedRegexpShouldntMatch(C)",
    ),
    "resource-priority esnet": (
        "      X-Triage-Level: 1\n",
        "      X-Triage-Level: 1\n      Resource-Priority: wps.0, esnet.1\n",
        "FailedRegexpShouldntMatch(C)",
    ),
    "pidf-lo in body": (
        "      a=sendrecv\n",
        "      a=sendrecv\n      a=x-loc:urn:ietf:params:xml:ns:pidf\n",
        "FailedRegexpShouldntMatch(C)",
    ),
    "no history-info": (
        "      History-Info:",
        "      X-Not-History-Info:",
        "FailedRegexpHdrNotFound(C)",
    ),
    "no referred-by": (
        "      Referred-By:",
        "      X-Not-Referred-By:",
        "FailedRegexpHdrNotFound(C)",
    ),
    "no emergency call id": (
        "purpose=emergency-CallId",
        "purpose=emergency-Other",
        "FailedRegexpDoesntMatch(C)",
    ),
    "no p-asserted-identity": (
        "      P-Asserted-Identity: <tel:+18055550123>\n",
        "",
        "FailedRegexpHdrNotFound(C)",
    ),
}


async def test_988_answer_checks_fail_each_violation(tmp_path: Path) -> None:
    reference = (SCENARIOS / "selftest" / "uac-988-leg.xml").read_text()
    runs = []
    for i, (old, new, _) in enumerate(MUTATIONS.values()):
        assert old in reference
        mutated = tmp_path / f"mutated-{i}" / "uac-988-leg.xml"
        mutated.parent.mkdir()
        mutated.write_text(reference.replace(old, new))
        runs.append(_pair(tmp_path / f"run-{i}", "uas-988-answer", str(mutated.with_suffix(""))))
    # and the real 911 caller, whose INVITE is what must NOT reach 988 unchanged
    runs.append(
        _pair(
            tmp_path / "caller",
            "uas-988-answer",
            "uac-911-caller",
            uac_extra=("-inf", CALLER_CSV),
        )
    )
    results = await asyncio.gather(*runs)
    for (name, (_, _, counter)), (pair, _) in zip(MUTATIONS.items(), results, strict=False):
        assert pair.uac.returncode == 0, (name, _ok(pair.uac))  # the caller side saw a normal call
        assert pair.uas.returncode == 1, (name, _ok(pair.uas))
        assert pair.uas.count("FailedCall(C)") == 1, name
        assert pair.uas.count(counter) == 1, (name, counter, pair.uas.stats)
    caller_pair = results[-1][0]
    assert caller_pair.uas.returncode == 1
    assert caller_pair.uas.count("FailedCall(C)") == 1
    assert caller_pair.uac.count("CallerBye(C)") == 1


@pytest.mark.parametrize("scenario,status", [("uas-988-busy", 486), ("uas-988-unavailable", 503)])
async def test_caller_gets_final_failure(tmp_path: Path, scenario: str, status: int) -> None:
    pair, _ = await _pair(tmp_path, scenario, "uac-911-caller", uac_extra=("-inf", CALLER_CSV))
    assert pair.uas.returncode == 0, _ok(pair.uas)  # the ACK for the failure arrived
    assert pair.uas.count(f"Rejected{status}(C)") == 1
    assert pair.uac.returncode == 1, _ok(pair.uac)  # the call failed on the caller's side
    assert pair.uac.count("FailedCall(C)") == 1
    assert pair.uac.count(f"Status{status}(C)") == 1
    assert f"rejected: SIP/2.0 {status}" in pair.logs("uac-911-caller")


async def test_caller_abandons_a_988_that_rings_forever(tmp_path: Path) -> None:
    pair, _ = await _pair(
        tmp_path,
        "uas-988-ring-forever",
        "uac-911-caller",
        uac_extra=("-inf", CALLER_CSV, "-recv_timeout", "1000"),
    )
    assert pair.uas.returncode == 0, _ok(pair.uas)  # CANCEL, 200, 487, ACK
    assert pair.uas.count("Cancelled(C)") == 1
    assert pair.uac.returncode == 1, _ok(pair.uac)
    assert pair.uac.count("Abandoned(C)") == 1
    assert "abandoned: SIP/2.0 487" in pair.logs("uac-911-caller")


# -- dispatcher positions -------------------------------------------------------------------------


async def test_dispatcher_accepts_sdp_only_and_rejects_multipart(tmp_path: Path) -> None:
    (plain, _), (multipart, _) = await asyncio.gather(
        _pair(tmp_path / "plain", "uas-dispatcher", "selftest/uac-988-leg", service="disp-1"),
        _pair(
            tmp_path / "multipart",
            "uas-dispatcher",
            "uac-911-caller",
            uac_extra=("-inf", CALLER_CSV),
        ),
    )
    assert plain.uas.returncode == 0, _ok(plain.uas)
    assert plain.uas.count("Bye(C)") == 1
    # the caller's multipart/mixed body is exactly what a position must not get by default
    assert multipart.uac.returncode == 0, _ok(multipart.uac)
    assert multipart.uas.returncode == 1, _ok(multipart.uas)
    assert multipart.uas.count("FailedRegexpShouldntMatch(C)") == 1


@pytest.mark.parametrize(
    "csv,counter,handoffd_counter",
    [
        ("transfer-ok.csv", "TransferOk(C)", "GotBye(C)"),
        ("transfer-failed.csv", "TransferFailed(C)", "SentBye(C)"),
    ],
)
async def test_dispatcher_blind_transfer_with_refer(
    tmp_path: Path, csv: str, counter: str, handoffd_counter: str
) -> None:
    pair, _ = await _pair(
        tmp_path,
        "uas-dispatcher-refer",
        "selftest/uac-transferee",
        uas_extra=("-inf", str(DATA / "refer-988.csv"), "-d", "200"),
        uac_extra=("-inf", str(DATA / csv)),
        service="disp-1",
    )
    assert pair.uas.returncode == 0, _ok(pair.uas)
    assert pair.uac.returncode == 0, _ok(pair.uac)  # REFER carried Refer-To 988 and Referred-By
    assert pair.uas.count("Notify(C)") == 2  # 100 Trying, then the final one
    assert pair.uas.count(counter) == 1
    assert pair.uac.count(handoffd_counter) == 1


# -- the 911 caller -------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["uac-911-caller", "uac-911-caller-waits"])
async def test_caller_takes_hold_and_far_end_bye(tmp_path: Path, caller: str) -> None:
    # -d 8000: uac-911-caller would hang up after 8 s; the far end's BYE comes first
    pair, _ = await _pair(
        tmp_path,
        "selftest/uas-hold-hangup",
        caller,
        uas_extra=("-d", "300"),
        uac_extra=("-inf", CALLER_CSV, "-d", "8000"),
    )
    assert pair.uas.returncode == 0, _ok(pair.uas)  # the hold answer said a=inactive
    assert pair.uac.returncode == 0, _ok(pair.uac)
    assert pair.uac.count("ReInvite(C)") == 1
    assert pair.uac.count("FarEndBye(C)") == 1
    assert pair.uac.count("CallerBye(C)") == 0


def _mime_parts(content_type: str, body: bytes) -> dict[str, tuple[dict[str, str], str]]:
    """The leaf parts of a multipart body: content type -> (part headers, decoded payload)."""
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    assert parsed.is_multipart()
    parts: dict[str, tuple[dict[str, str], str]] = {}
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts[part.get_content_type()] = (dict(part.items()), payload.decode())
    return parts


class _Capture(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.invite: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.acked = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        msg = parse_message(data)
        assert self.transport is not None
        if isinstance(msg, Request) and msg.method == "INVITE":
            if not self.invite.done():
                self.invite.set_result(data)
            reply = make_response(
                msg, 486, to_tag="py1", headers=[("Reason", 'SIP;cause=486;text="Busy"')]
            )
            self.transport.sendto(reply.to_bytes(), addr)
        elif isinstance(msg, Request) and msg.method == "ACK":
            self.acked.set()


async def test_caller_invite_carries_every_metadata_element(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(_Capture, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        run = await start_sipp(
            "uac-911-caller",
            workdir=tmp_path,
            local_port=free_port(),
            remote=f"127.0.0.1:{port}",
            timeout_s=SIPP_TIMEOUT_S,
            extra=("-inf", CALLER_CSV, "-trace_logs"),
        )
        try:
            raw = await asyncio.wait_for(peer.invite, 10)
            await asyncio.wait_for(peer.acked.wait(), 10)
            result = await run.wait(timeout=SIPP_TIMEOUT_S + 5)
        finally:
            run.kill()
    finally:
        transport.close()

    assert result.returncode == 1 and result.count("Status486(C)") == 1, _ok(result)
    logs = "".join(p.read_text() for p in tmp_path.glob("uac-911-caller_*_logs.log"))
    assert 'rejected: SIP/2.0 486 Reason: SIP;cause=486;text="Busy"' in logs

    invite = parse_message(raw)  # a well-formed request with an exact Content-Length
    assert isinstance(invite, Request)
    assert invite.uri.user == "disp-1"  # field0 of data/911-caller.csv
    h = invite.headers
    assert [str(p.uri) for p in invite.p_asserted_identity] == ["tel:+18055550123"]
    purposes = {info.param("purpose"): str(info.uri) for info in invite.call_info}
    assert purposes["emergency-CallId"] == "urn:emergency:uid:callid:cpe-0001:psap.example.org"
    assert purposes["emergency-IncidentId"].startswith("urn:emergency:uid:incidentid:")
    assert purposes["EmergencyCallData.ProviderInfo"].startswith("https://")
    assert h.get("Geolocation-Routing") == "yes"
    assert h.get("X-Triage-Level") == "1"
    assert h.get("X-Incident-Priority") == "high"
    assert h.get("Accept-Language") == "en"
    assert "esnet" in (h.get("Resource-Priority") or "")
    assert invite.user_to_user
    [geo] = invite.geolocation
    assert geo.uri.scheme == "cid"

    # multipart/mixed: the SDP offer and the PIDF-LO the Geolocation header points at
    parts = _mime_parts(h.get("Content-Type") or "", invite.body)
    assert sorted(parts) == ["application/pidf+xml", "application/sdp"]
    [audio] = parse_sdp(parts["application/sdp"][1]).media
    assert [(c.payload_type, c.encoding_name) for c in codecs(audio)] == [
        (8, "PCMA"),
        (0, "PCMU"),
        (101, "telephone-event"),
    ]
    pidf_headers, pidf_text = parts["application/pidf+xml"]
    assert str(geo.uri) == "cid:" + pidf_headers["Content-ID"].strip("<>")
    pidf = ET.fromstring(pidf_text.strip())
    assert pidf.tag == "{urn:ietf:params:xml:ns:pidf}presence"
    pos = pidf.find(".//{http://www.opengis.net/gml}pos")
    assert pos is not None and pos.text == "34.4208 -119.6982"
