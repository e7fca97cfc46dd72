"""Logs: one JSON object per line (structlog), ids bound, no PHI unless asked for.

:func:`configure` routes both structlog loggers and the stdlib ``logging`` loggers the lower
layers use through one JSON renderer on stderr. Every line has ``ts`` (UTC, ISO 8601), ``level``,
``logger`` and ``event``; call and transfer ids are bound with :func:`bind` (contextvars) or passed
as fields.

Caller numbers and locations are protected health information. Code never passes them to a
logger; as a second line of defence, unless ``logging.phi`` is true, :func:`redact` drops the
fields named in :data:`PHI_FIELDS` and masks what looks like a phone number (7 digits or more)
or a coordinate pair in every other text field. Ids, addresses and timestamps are left alone.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: fields that are PHI by name: dropped unless logging.phi is on
PHI_FIELDS = frozenset(
    {"caller", "caller_number", "identity", "from_uri", "location", "geolocation", "pidf"}
)
#: fields never masked (ids and machine values that can contain long digit runs)
_KEEP = frozenset({"ts", "level", "logger", "call_id", "transfer_id", "sip_call_id", "event_id"})
_PHONE = re.compile(r"\+?\d(?:[\s().\-]{0,2}\d){6,}")
_COORDS = re.compile(r"-?\d{1,3}\.\d{2,}\s*[ ,]\s*-?\d{1,3}\.\d{2,}")
#: digit runs that are not phone numbers: IPv4 addresses, dates, port ranges
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d{4}-\d\d-\d\d|\d{4,5}-\d{4,5}")
MASK = "[redacted]"


def _mask(text: str) -> str:
    text = _COORDS.sub(MASK, text)
    return _PHONE.sub(lambda m: m.group(0) if _NOT_PHONE.fullmatch(m.group(0)) else MASK, text)


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop PHI fields, mask numbers and coordinates in text."""
    for key in PHI_FIELDS.intersection(event):
        event[key] = MASK
    for key, value in event.items():
        if key not in _KEEP and isinstance(value, str):
            event[key] = _mask(value)
    return event


def configure(level: str = "info", *, phi: bool = False, stream: TextIO | None = None) -> None:
    """Send every log record (structlog and stdlib) to ``stream`` (stderr) as JSON lines."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,
    ]
    if not phi:
        shared.append(redact)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    """A structlog logger named ``name`` (``log.info("event", key=value)``)."""
    return structlog.stdlib.get_logger(name)


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
