"""A real handoffd for end-to-end tests: config and rules on free loopback ports.

:func:`write_setup` writes a config (one trunk, two positions) and a rule directory (a primary and
a backup 988 destination, both cold, short ring timeouts) under a temporary directory;
:class:`Ports` says where every party listens. Tests run the :class:`~telephony.daemon.Daemon`
in their own event loop (so they can read its call layer and relay counters) or the
``handoffd`` command in a subprocess (signals, startup time).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

from telephony.call.b2bua import B2bua
from telephony.daemon import Daemon
from tests.peers.sipp import free_port

TOKEN = "e2e-secret-token"


async def settled(daemon: Daemon, timeout: float = 5.0) -> B2bua:
    """handoffd's call layer once no call is live. A SIPp party exits as soon as it has answered
    the last BYE, which may be before handoffd has read that 200 and moved the call to ``ended``;
    tests that read ``ended`` wait here first (and fail if a call is still live after
    ``timeout``)."""
    core = daemon.core
    assert core is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while core.calls and loop.time() < deadline:
        await asyncio.sleep(0.02)
    live = [c.state for c in core.calls.values()]
    assert not live, f"calls still live after {timeout} s: {live}"
    return core


def _media_base() -> int:
    # an even base whose 200 ports are probably free: derived from a free port
    base = free_port() & ~1
    return base if base + 200 < 65000 else 20000


@dataclass
class Ports:
    sip: int = field(default_factory=free_port)
    http: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    disp1: int = field(default_factory=free_port)
    disp2: int = field(default_factory=free_port)
    primary: int = field(default_factory=free_port)
    backup: int = field(default_factory=free_port)
    media: int = field(default_factory=_media_base)


def write_setup(
    root: Path,
    ports: Ports,
    *,
    ring_timeout: float = 3.0,
    position_ring_timeout: float = 5.0,
    probe_interval: float = 0.0,
    redis_url: str | None = None,
    records: str = "",
    positions: str = "",
    registrar: str = "",
) -> Path:
    """Write ``root/handoffd.yaml`` and ``root/rules/*.yaml``; return the config path.

    ``redis_url``: where records go (default: a port nothing listens on, so records spool under
    ``root/spool``); ``records``: extra YAML lines for the ``records`` section, indented by two;
    ``positions``: more positions after disp-1 and disp-2, indented by two; ``registrar``: the
    lines of a ``registrar`` section, indented by two.
    """
    if redis_url is None:
        redis_url = f"redis://127.0.0.1:{free_port(socket.SOCK_STREAM)}/0"
    rules = root / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "00-destinations.yaml").write_text(
        f"""destinations:
  988-primary:
    uri: sip:988@127.0.0.1:{ports.primary}
    ring_timeout: {ring_timeout}
    metadata:
      x_header_allowlist: [X-Incident-Priority]
  988-backup:
    uri: sip:988@127.0.0.1:{ports.backup}
    ring_timeout: {ring_timeout}
    metadata:
      x_header_allowlist: [X-Incident-Priority]
"""
    )
    (rules / "90-default.yaml").write_text(
        """rules:
  - name: default-cold
    mode: cold
    chain: [988-primary, 988-backup]
"""
    )
    config = root / "handoffd.yaml"
    config.write_text(
        f"""sip:
  listen: ["udp:127.0.0.1:{ports.sip}", "tcp:127.0.0.1:{ports.sip}"]
  ring_timeout: {position_ring_timeout}
  t1: 0.5
http:
  host: 127.0.0.1
  port: {ports.http}
  tokens: ["{TOKEN}"]
media:
  host: 127.0.0.1
  port_min: {ports.media}
  port_max: {ports.media + 199}
trunks:
  psap-a:
    allow: [127.0.0.0/8]
    psap_id: psap-a
    transfer_numbers: ["988"]
positions:
  disp-1:
    uri: sip:disp1@127.0.0.1:{ports.disp1}
    numbers: ["2001"]
  disp-2:
    uri: sip:disp2@127.0.0.1:{ports.disp2}
    numbers: ["2002"]
{positions}registrar:
{registrar}rules: rules
probe:
  interval: {probe_interval}
drain:
  timeout: 5
  retry_after: 7
redis:
  url: {redis_url}
records:
  spool:
    dir: spool
{records}"""
    )
    return config
