"""Logs are JSON lines with ids, from structlog and stdlib loggers alike, and carry no PHI unless
``logging.phi`` is set."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from telephony import logs

NUMBER = "+18055550123"
COORDS = "34.4201 -119.6982"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    yield buf
    logs.configure("warning", stream=io.StringIO())  # leave a quiet, PHI-safe setup behind


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_stdlib_and_structlog_records_are_json_lines_with_ids(out: io.StringIO) -> None:
    logs.configure("info", stream=out)
    logging.getLogger("telephony.io").info("malformed datagram from %s", "127.0.0.1")
    logs.bind(call_id="c7-00001234567")
    try:
        logs.get("telephony.call").info("transfer completed", transfer_id="t9-1234567890")
    finally:
        logs.unbind("call_id")
    logging.getLogger("telephony.io").debug("below the level")
    first, second = lines(out)
    assert first["event"] == "malformed datagram from 127.0.0.1"
    assert first["level"] == "info" and first["logger"] == "telephony.io"
    assert str(first["ts"]).endswith("Z")
    assert second["call_id"] == "c7-00001234567"  # ids are never masked
    assert second["transfer_id"] == "t9-1234567890"
    assert second["event"] == "transfer completed"


def test_phi_is_dropped_or_masked_unless_asked_for(out: io.StringIO) -> None:
    logs.configure("info", stream=out)
    log = logs.get("telephony.call")
    log.info("offered", caller_number=NUMBER, location=f"<gml:pos>{COORDS}</gml:pos>")
    log.info(f"from sip:{NUMBER}@psap.example at {COORDS}", dest="127.0.0.1:5090")
    try:
        raise ValueError(f"tel:{NUMBER}")
    except ValueError:
        logging.getLogger("telephony.daemon").exception("handler failed")
    text = out.getvalue()
    assert NUMBER not in text and "8055550123" not in text and "119.6982" not in text
    a, b, c = lines(out)
    assert a["caller_number"] == logs.MASK and a["location"] == logs.MASK
    assert b["event"] == f"from sip:{logs.MASK}@psap.example at {logs.MASK}"
    assert b["dest"] == "127.0.0.1:5090"  # addresses, ports, dates stay readable
    assert "ValueError: tel:[redacted]" in str(c["exception"])


def test_with_the_phi_switch_on_the_values_are_kept(out: io.StringIO) -> None:
    logs.configure("info", phi=True, stream=out)
    logs.get("telephony.call").info("offered", caller_number=NUMBER)
    assert lines(out)[0]["caller_number"] == NUMBER


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:5060", "ports 20000-20999", "2026-11-22", "c12-abcdef", "SIP/2.0 486", "T1 0.5"],
)
def test_machine_values_are_not_mistaken_for_numbers(text: str) -> None:
    assert logs._mask(text) == text


def test_structlog_lines_keep_level_filter_exceptions_and_redaction(out: io.StringIO) -> None:
    logs.configure("info", stream=out)
    log = logs.get("telephony.records")
    log.debug("below the level", call_id="c1")
    try:
        raise RuntimeError(f"caller {NUMBER}")
    except RuntimeError:
        log.exception("record failed", call_id="c1-00001234567", record="call_offered")
    (line,) = lines(out)
    assert line["event"] == "record failed" and line["level"] == "error"
    assert line["logger"] == "telephony.records" and line["call_id"] == "c1-00001234567"
    assert "RuntimeError: caller [redacted]" in str(line["exception"])
    assert NUMBER not in out.getvalue()


def test_a_new_configuration_takes_over_structlog_loggers() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("info", stream=first)
    logs.get("telephony.records").info("one")
    logs.configure("info", stream=second)
    logs.get("telephony.records").info("two")
    try:
        assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["one"]
        assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == ["two"]
    finally:
        logs.configure("warning", stream=io.StringIO())
