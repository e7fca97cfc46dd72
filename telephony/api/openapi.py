"""The OpenAPI 3.1 document of the HTTP API, written by hand as data.

It is the contract clients and the schemathesis tests read: every route, request body, response
and error shape. Keep it in step with :mod:`telephony.api.app` (the request-body limits below are
the ones the app enforces) and with the views the call layer returns
(:mod:`telephony.api.control`).
"""

from __future__ import annotations

import copy
from typing import Any

from telephony.call.transfer import TState

API_VERSION = "1.0.0"

DESTINATION_MAX = 128
REASON_MAX = 256
TRIAGE_LEVELS = (1, 2, 3)
MODES = ("cold", "warm", "consult")
BODY_LIMIT = 64 * 1024
"""The largest request body accepted, in bytes (larger: 413)."""

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    """An object schema whose listed properties are all required. Response objects stay open
    (a new key is not a breaking change); request bodies are closed."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(properties),
        "properties": properties,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "status": {"type": "integer", "description": "The HTTP status again."},
                    "code": {
                        "type": "string",
                        "description": "Machine-readable: unauthorized, not_found, "
                        "method_not_allowed, bad_json, unsupported_media_type, "
                        "body_too_large, invalid_field, unknown_field, unknown_call, "
                        "unknown_transfer, conflict, not_allowed, bad_rules, not_implemented, "
                        "unavailable, internal_error, ...",
                    },
                    "message": {"type": "string", "description": "Human-readable text."},
                    "field": {
                        **_NULLABLE_STRING,
                        "description": "The request body field the error is about, if any.",
                    },
                }
            )
        }
    ),
    "Health": _object(
        {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
    ),
    "Leg": _object(
        {
            "role": {
                "type": "string",
                "enum": ["caller", "dispatcher", "destination", "consult"],
            },
            "sip_call_id": {"type": "string", "description": "The SIP Call-ID of this leg."},
            "state": {"type": "string", "description": "The leg's SIP state."},
            "peer": {"type": "string", "description": "transport:host:port of the far end."},
        }
    ),
    "Call": _object(
        {
            "id": {"type": "string", "description": "handoffd's internal call id."},
            "state": {
                "type": "string",
                "enum": ["ringing", "connected", "transferring", "transferred", "ended"],
            },
            "trunk": {**_NULLABLE_STRING, "description": "The PSAP-side trunk it came in on."},
            "psap_id": _NULLABLE_STRING,
            "position": {**_NULLABLE_STRING, "description": "The dispatcher position."},
            "emergency_call_id": {
                **_NULLABLE_STRING,
                "description": "From Call-Info purpose=emergency-CallId.",
            },
            "incident_id": {
                **_NULLABLE_STRING,
                "description": "From Call-Info purpose=emergency-IncidentId.",
            },
            "created_at": {"type": "number", "description": "Unix time in seconds."},
            "transfer_id": {**_NULLABLE_STRING, "description": "The current transfer, if any."},
            "legs": {"type": "array", "items": _ref("Leg")},
        }
    ),
    "CallList": _object({"calls": {"type": "array", "items": _ref("Call")}}),
    "TimelineEvent": _object(
        {
            "event": {"type": "string", "description": "What happened (trying, ringing, ...)."},
            "at": {"type": "number", "description": "Unix time in seconds."},
            "destination": _NULLABLE_STRING,
            "sip_status": _NULLABLE_INT,
        }
    ),
    "Transfer": _object(
        {
            "id": {"type": "string"},
            "call_id": {"type": "string"},
            "mode": {"type": "string", "enum": list(MODES)},
            "state": {"type": "string", "enum": [state.value for state in TState]},
            "trigger": {
                "type": "string",
                "enum": ["api", "refer", "invite", "dtmf", "attended"],
            },
            "destination": {**_NULLABLE_STRING, "description": "The destination being tried."},
            "triage_level": _NULLABLE_INT,
            "reason": _NULLABLE_STRING,
            "rule": {**_NULLABLE_STRING, "description": "The routing rule that matched."},
            "dispatcher_stays": {
                "type": "boolean",
                "description": "The rule keeps the dispatcher in the conference (triage level 3 "
                "co-response): complete is refused; the dispatcher may still hang up.",
            },
            "outcome": _NULLABLE_STRING,
            "sip_status": {**_NULLABLE_INT, "description": "The last final SIP status."},
            "timeline": {"type": "array", "items": _ref("TimelineEvent")},
        }
    ),
    "TransferAccepted": {
        "allOf": [
            _ref("Transfer"),
            _object(
                {"transfer_id": {"type": "string", "description": "The same as `id`."}},
            ),
        ]
    },
    "TransferRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "mode": {"type": "string", "enum": list(MODES), "default": "cold"},
            "destination": {
                "type": "string",
                "minLength": 1,
                "maxLength": DESTINATION_MAX,
                "description": "A destination name or number; omitted: the routing rules choose.",
            },
            "triage_level": {"type": "integer", "enum": list(TRIAGE_LEVELS)},
            "reason": {"type": "string", "maxLength": REASON_MAX},
        },
    },
    "ReloadResult": _object(
        {
            "rules": {"type": "integer", "minimum": 0, "description": "Rules now in force."},
            "sources": {"type": "array", "items": {"type": "string"}},
        }
    ),
}


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
        **extra,
    }


_RESPONSES: dict[str, Any] = {
    "BadRequest": _json("Error", "The body is not valid JSON."),
    "Unauthorized": _json(
        "Error",
        "Missing or wrong bearer token.",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "Forbidden": _json("Error", "The destination is not allowed for this call."),
    "NotFound": _json("Error", "No such call or transfer."),
    "Conflict": _json("Error", "The call or transfer is in the wrong state for this."),
    "TooLarge": _json("Error", f"The body is larger than {BODY_LIMIT} bytes."),
    "UnsupportedMediaType": _json("Error", "The body is not application/json."),
    "Unprocessable": _json(
        "Error", "A field is invalid or the request is not allowed; `field` names it."
    ),
    "InternalError": _json("Error", "An unexpected error (logged; no details in the body)."),
    "Unavailable": _json("Error", "The daemon is starting or draining."),
}


def _responses(ok: str, body: dict[str, Any], *errors: str) -> dict[str, Any]:
    out: dict[str, Any] = {ok: body, "401": {"$ref": "#/components/responses/Unauthorized"}}
    names = {
        "400": "BadRequest",
        "403": "Forbidden",
        "404": "NotFound",
        "409": "Conflict",
        "413": "TooLarge",
        "415": "UnsupportedMediaType",
        "422": "Unprocessable",
        "500": "InternalError",
        "503": "Unavailable",
    }
    for status in (*errors, "500", "503"):
        out[status] = {"$ref": f"#/components/responses/{names[status]}"}
    return out


_CALL_ID = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "description": "handoffd's internal call id (not the SIP Call-ID).",
    "schema": {"type": "string", "minLength": 1},
}
_TRANSFER_ID = {
    "name": "transfer_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}

_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "Liveness and readiness",
            "description": "200 once SIP and HTTP are serving; 503 while starting or draining.",
            "security": [],
            "responses": {
                "200": _json("Health", "Serving."),
                "503": _json("Health", "Starting or draining."),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/v1/calls": {
        "get": {
            "operationId": "listCalls",
            "summary": "Active calls",
            "responses": _responses("200", _json("CallList", "The active calls.")),
        }
    },
    "/v1/calls/{call_id}": {
        "parameters": [_CALL_ID],
        "get": {
            "operationId": "getCall",
            "summary": "One call: state, legs with their SIP Call-IDs, emergency ids",
            "responses": _responses("200", _json("Call", "The call."), "404"),
        },
    },
    "/v1/calls/{call_id}/transfers": {
        "parameters": [_CALL_ID],
        "post": {
            "operationId": "startTransfer",
            "summary": "Transfer the call (cold: the dispatcher leaves)",
            "description": "An empty body means `{}`: a cold transfer to where the routing "
            "rules send it. Poll the transfer at the `Location` given.",
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref("TransferRequest")}},
            },
            "responses": _responses(
                "202",
                _json(
                    "TransferAccepted",
                    "The transfer started.",
                    headers={
                        "Location": {
                            "description": "/v1/transfers/{transfer_id}",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "400",
                "403",
                "404",
                "409",
                "413",
                "415",
                "422",
            ),
        },
    },
    "/v1/transfers/{transfer_id}": {
        "parameters": [_TRANSFER_ID],
        "get": {
            "operationId": "getTransfer",
            "summary": "A transfer's state and timeline so far",
            "responses": _responses("200", _json("Transfer", "The transfer."), "404"),
        },
    },
    "/v1/transfers/{transfer_id}/cancel": {
        "parameters": [_TRANSFER_ID],
        "post": {
            "operationId": "cancelTransfer",
            "summary": "Cancel before the handoff (the caller stays with the dispatcher)",
            "description": "Any request body is ignored.",
            "responses": _responses(
                "200", _json("Transfer", "The cancelled transfer."), "404", "409"
            ),
        },
    },
    "/v1/transfers/{transfer_id}/complete": {
        "parameters": [_TRANSFER_ID],
        "post": {
            "operationId": "completeTransfer",
            "summary": "Warm or consult: the dispatcher leaves, caller and counselor stay",
            "description": "Any request body is ignored. 409 (naming the state) unless the "
            "transfer is in conference or consulting.",
            "responses": _responses(
                "200", _json("Transfer", "The completed transfer."), "404", "409"
            ),
        },
    },
    "/v1/transfers/{transfer_id}/conference": {
        "parameters": [_TRANSFER_ID],
        "post": {
            "operationId": "conferenceTransfer",
            "summary": "Consult: bring the held caller into a three-way conference",
            "description": "Any request body is ignored. 409 unless the transfer is consulting.",
            "responses": _responses(
                "200", _json("Transfer", "The transfer, now in conference."), "404", "409"
            ),
        },
    },
    "/v1/admin/reload": {
        "post": {
            "operationId": "reloadRules",
            "summary": "Reload the routing rules (as SIGHUP does)",
            "description": "A bad rules file is rejected with its `file:line` problems in the "
            "message (422) and the running rules stay. Any request body is ignored.",
            "responses": _responses(
                "200", _json("ReloadResult", "The new rules are in force."), "422"
            ),
        }
    },
}

_METRICS_PATH: dict[str, Any] = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "security": [],
        "responses": {
            "200": {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
}


def openapi_document(*, metrics: bool = False) -> dict[str, Any]:
    """A fresh copy of the document; ``metrics`` adds ``GET /metrics`` (served only when the
    daemon has metrics)."""
    paths = copy.deepcopy(_PATHS)
    if metrics:
        paths["/metrics"] = copy.deepcopy(_METRICS_PATH)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "handoffd",
            "version": API_VERSION,
            "description": "Call control for handoffd, the 911 to 988 transfer B2BUA. Every "
            'error is JSON: `{"error": {"status", "code", "message", "field"}}`.',
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the daemon's configuration "
                    "(`Authorization: Bearer <token>`).",
                }
            },
            "schemas": copy.deepcopy(_SCHEMAS),
            "responses": copy.deepcopy(_RESPONSES),
        },
    }
