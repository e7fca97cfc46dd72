"""The HTTP API of handoffd: an aiohttp app factory the daemon mounts.

See docs/api.md for the endpoints and ``GET /openapi.json`` for the machine-readable contract.
"""

from telephony.api.app import create_app
from telephony.api.control import CallControl, ControlError, Mode, TransferRequest
from telephony.api.openapi import openapi_document

__all__ = [
    "CallControl",
    "ControlError",
    "Mode",
    "TransferRequest",
    "create_app",
    "openapi_document",
]
