"""Media: the RTP/RTCP relay (asyncio datagram endpoints) and its port allocator.

See :mod:`telephony.media.relay` for the latching rule, hold, counters and the transfer model.
"""

from telephony.media.ports import MediaError, PortAllocator, PortPair, PortsExhaustedError
from telephony.media.relay import (
    Bridge,
    BridgeStats,
    LatchMode,
    LegEndpoint,
    MediaCounters,
    Relay,
    RelayStats,
    SideName,
)

__all__ = [
    "Bridge",
    "BridgeStats",
    "LatchMode",
    "LegEndpoint",
    "MediaCounters",
    "MediaError",
    "PortAllocator",
    "PortPair",
    "PortsExhaustedError",
    "Relay",
    "RelayStats",
    "SideName",
]
