"""Logs: one JSON object per line (structlog), ids bound, no PHI unless asked for.

:func:`configure` sends both structlog loggers and the stdlib ``logging`` loggers the lower
layers use to one stream (stderr) as JSON lines. Every line has ``ts`` (UTC, ISO 8601),
``level``, ``logger`` and ``event``; call and transfer ids are bound with :func:`bind`
(contextvars) or passed as fields. A structlog line is rendered once by structlog's own
processors and written straight to the stream (no stdlib ``LogRecord``, handler and second
formatter pass: that made each record line cost ~0.4 ms on the box of bench/RESULTS.md); stdlib
records go through a handler whose formatter runs the same processors.

Caller numbers and locations are protected health information. Code never passes them to a
logger; as a second line of defence, unless ``logging.phi`` is true, :func:`redact` drops the
fields named in :data:`PHI_FIELDS` and masks what looks like a phone number (7 digits or more)
or a coordinate pair in every other text field. Ids, addresses and timestamps are left alone.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
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


class _LineWriter:
    """structlog's logger: writes one rendered line (and flushes, as a StreamHandler does)."""

    __slots__ = ("lock", "name", "stream")

    def __init__(self, stream: TextIO, name: str, lock: threading.Lock) -> None:
        self.stream = stream
        self.name = name  # read by the add_logger_name processor
        self.lock = lock

    def msg(self, message: str) -> None:
        with self.lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _LineWriterFactory:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, *args: Any) -> _LineWriter:
        return _LineWriter(self.stream, str(args[0]) if args else "", self.lock)


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
    renderer = structlog.processors.JSONRenderer(sort_keys=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.reset_defaults()  # drop loggers cached under an earlier configuration
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_LineWriterFactory(out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    """A structlog logger named ``name`` (``log.info("event", key=value)``)."""
    return structlog.get_logger(name)


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
