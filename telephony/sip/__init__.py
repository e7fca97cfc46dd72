"""Sans-IO SIP: bytes and ``now`` go in; messages, events and deadlines come out.

Nothing in this package opens a socket, starts a task or reads the clock.

The per-message modules may run compiled (``telephony/native.py``): a build made from exactly these
sources is put first on this package's path; otherwise the sources below are what runs.
"""

from telephony.native import compiled_dir as _compiled_dir

if (_build := _compiled_dir("sip")) is not None:
    __path__.insert(0, str(_build))

from telephony.sip.errors import ParseError, ProtocolError, SipError
from telephony.sip.headers import (
    CSeq,
    NameAddr,
    ParamValue,
    Via,
    new_branch,
    new_tag,
    parse_name_addr,
    parse_via,
)
from telephony.sip.message import (
    Headers,
    Message,
    Request,
    Response,
    make_ack_for_failure,
    make_cancel,
    make_request,
    make_response,
)
from telephony.sip.parser import KeepAlive, StreamParser, parse_message
from telephony.sip.uri import URI, parse_uri

__all__ = [
    "URI",
    "CSeq",
    "Headers",
    "KeepAlive",
    "Message",
    "NameAddr",
    "ParamValue",
    "ParseError",
    "ProtocolError",
    "Request",
    "Response",
    "SipError",
    "StreamParser",
    "Via",
    "make_ack_for_failure",
    "make_cancel",
    "make_request",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
