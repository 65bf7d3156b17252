"""The directory API's OpenAPI 3.1 description, written by hand (served at ``/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_SIGNED = {
    "description": "Signed request: headers x-secchat-name (percent-encoded), x-secchat-directory "
    "(percent-encoded: the directory the request is for, scheme://host:port of the URL the client uses "
    "or a configured directory name; refused with 421 wrong_directory unless it is one of this "
    "directory's names), x-secchat-timestamp (unix seconds, within 120 s of the server), "
    "x-secchat-nonce (32 hex digits, never reused) and x-secchat-signature (hex Ed25519 signature "
    "over secchat.directory.auth.request_message: canonical('secchat-directory-request/v2', "
    "directory, METHOD, path?query, timestamp, nonce, sha256(body))).",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _ok(name: str | None, description: str, *, array: bool = False) -> dict[str, Any]:
    if name is None:
        return {"description": description}
    schema: dict[str, Any] = {"type": "array", "items": _ref(name)} if array else _ref(name)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {
    "description": "Refused: {error: {code, message}}; see components.schemas.Error for the codes.",
    "content": {"application/json": {"schema": _ref("Error")}},
}


def _op(summary: str, responses: dict[str, Any], *, body: str | None = None, signed: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, "4XX": _ERROR}}
    if body:
        op["requestBody"] = _body(body)
    if signed:
        op["description"] = _SIGNED["description"]
        op["security"] = [{"secchatSignature": []}]
    return op


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
_ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"}
_ID = {"name": "id", "in": "path", "required": True, "schema": _ID_SCHEMA}
_CREATOR = {"name": "creator", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
_ID_QUERY = {"name": "id", "in": "query", "required": True, "schema": _ID_SCHEMA}

_AFTER = {
    "name": "after",
    "in": "query",
    "description": "Return the next page (at most 1000 entries, by code point) after this key "
    "(a name; for conferences of a participant creator/id, for conferences of an id a creator).",
    "schema": {"type": "string"},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "SecChat directory",
        "version": "1",
        "description": "An untrusted directory of participants' certificates, contact addresses and "
        "creator-signed conference records. Clients verify everything it returns.",
    },
    "paths": {
        "/v1/health": {"get": _op("Liveness: the process answers (the database is not asked)", {"200": {"description": "up"}})},
        "/v1/ready": {
            "get": _op(
                "Readiness: a query of the directory's tables succeeded within a few seconds",
                {"200": {"description": "ready"}, "503": {**_ERROR, "description": "database_unavailable"}},
            )
        },
        "/v1/participants": {
            "post": _op(
                "Register a participant (proof of possession: the request is signed by the certificate's key); "
                "for a registered name: a renewal (same key and CA, newer certificate) or a key rotation "
                "(`rotation` signed by the registered key), else 409 identity_taken",
                {
                    "201": _ok("Participant", "registered"),
                    "200": _ok("Participant", "already registered with this certificate, renewed or rotated"),
                },
                body="ParticipantIn",
                signed=True,
            ),
            "get": _op(
                "List participants",
                {"200": _ok("Participant", "participants by name", array=True)},
            )
            | {"parameters": [_AFTER]},
        },
        "/v1/participants/{name}": {
            "parameters": [_NAME],
            "get": _op("Get a participant", {"200": _ok("Participant", "the participant")}),
            "delete": _op(
                "Unregister (a request signed by the participant): the entry goes, the name is free",
                {"204": _ok(None, "unregistered")},
                signed=True,
            ),
        },
        "/v1/participants/{name}/contact": {
            "parameters": [_NAME],
            "put": _op(
                "Publish one's contact address (signed record, and a signed request by the same participant)",
                {"200": _ok("Participant", "updated")},
                body="ContactIn",
                signed=True,
            ),
        },
        "/v1/participants/{name}/conferences": {
            "parameters": [_NAME],
            "get": _op(
                "Conferences a participant is a member of, by (creator, id)",
                {"200": _ok("Conference", "conferences", array=True)},
            )
            | {"parameters": [_AFTER]},
        },
        "/v1/conferences": {
            "post": _op(
                "Create a conference (request signed by the creator; record signed by the creator); "
                "a deleted (creator, id) again needs a version above its tombstone's (409 stale_version)",
                {"201": _ok("Conference", "created")},
                body="ConferenceIn",
                signed=True,
            ),
            "get": _op(
                "Every creator's conference of one id, by creator",
                {"200": _ok("Conference", "conferences", array=True)},
            )
            | {"parameters": [_ID_QUERY, _AFTER]},
        },
        "/v1/conferences/{creator}/{id}": {
            "parameters": [_CREATOR, _ID],
            "get": _op(
                "Get a conference",
                {
                    "200": _ok("Conference", "the conference record"),
                    "410": _ok("Deleted", "deleted by its creator: {error, tombstone}"),
                },
            ),
            "delete": _op(
                "Delete a conference (creator only): the body is the creator's signed tombstone",
                {"204": _ok(None, "deleted")},
                body="TombstoneIn",
                signed=True,
            ),
        },
    },
    "components": {
        "securitySchemes": {
            "secchatSignature": {"type": "apiKey", "in": "header", "name": "x-secchat-signature", **_SIGNED}
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {
                                "type": "string",
                                "enum": [
                                    "malformed_json", "bad_pem", "missing_signature", "bad_request_signature",
                                    "stale_request", "replayed_request", "unknown_signer", "wrong_directory",
                                    "signer_mismatch", "stale_version", "conference_deleted",
                                    "bad_tombstone_signature",
                                    "not_creator", "not_owner", "not_found", "unknown_participant",
                                    "unknown_conference", "method_not_allowed", "identity_taken",
                                    "duplicate_conference", "body_too_large", "invalid_request",
                                    "invalid_time_frame", "creator_not_member", "duplicate_member",
                                    "unknown_member", "certificate_mismatch", "name_mismatch",
                                    "bad_record_signature", "bad_contact_signature", "unknown_ca", "expired",
                                    "not_yet_valid", "bad_signature", "not_a_ca", "not_a_leaf", "no_name",
                                    "unsupported_key", "unavailable", "internal", "identity_changed",
                                    "stale_certificate", "bad_rotation_signature",
                                ],
                            },
                            "message": {"type": "string"},
                        },
                    }
                },
            },
            "ParticipantIn": {
                "type": "object",
                "required": ["cert_pem"],
                "additionalProperties": False,
                "properties": {
                    "cert_pem": {"type": "string", "maxLength": 8192},
                    "rotation": {
                        "type": "object",
                        "description": "identity-rotation/v1 (name, issuer, old_key, new_key, rotated_at) "
                        "signed by the registered (old) key",
                        "required": ["old_key", "rotated_at", "signature"],
                        "additionalProperties": False,
                        "properties": {
                            "old_key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "rotated_at": {"type": "integer", "minimum": 0},
                            "signature": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
                        },
                    },
                },
            },
            "ContactIn": {
                "type": "object",
                "required": ["host", "port", "issued_at", "signature"],
                "additionalProperties": False,
                "properties": {
                    "host": {"type": "string", "maxLength": 253},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "issued_at": {"type": "integer", "minimum": 0},
                    "signature": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{128}$",
                        "description": "Ed25519 over canonical('contact-address/v1', name, host, port, issued_at)",
                    },
                },
            },
            "Contact": {
                "type": "object",
                "properties": {
                    "host": {"type": "string"},
                    "port": {"type": "integer"},
                    "issued_at": {"type": "integer"},
                    "signature": {"type": "string"},
                },
            },
            "Participant": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "issuer": {"type": "string"},
                    "fingerprint": {"type": "string", "description": "SHA-256 of the certificate's DER, hex"},
                    "cert_pem": {"type": "string"},
                    "registered_at": {"type": "integer"},
                    "contact": {"oneOf": [_ref("Contact"), {"type": "null"}]},
                },
            },
            "ConferenceIn": {
                "type": "object",
                "required": ["id", "t0", "t1", "members", "certs", "creator", "version", "created_at", "signature"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"},
                    "t0": {"type": "integer", "minimum": 0, "description": "unix seconds"},
                    "t1": {"type": "integer", "minimum": 0, "description": "unix seconds, > t0"},
                    "members": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 500},
                    "certs": {"type": "array", "items": {"type": "string"}, "description": "PEM, in member order"},
                    "creator": {"type": "string"},
                    "version": {"type": "integer", "minimum": 1, "description": "higher than any earlier record"},
                    "created_at": {"type": "integer", "minimum": 0, "description": "unix seconds, creator's clock"},
                    "signature": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{128}$",
                        "description": "creator's Ed25519 signature over canonical('conference-record/v2', "
                        "creator, id, version, created_at, t0, t1, members, SHA-256 fingerprints of certs)",
                    },
                },
            },
            "Conference": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "t0": {"type": "integer"},
                    "t1": {"type": "integer"},
                    "members": {"type": "array", "items": {"type": "string"}},
                    "certs": {"type": "array", "items": {"type": "string"}},
                    "creator": {"type": "string"},
                    "signature": {"type": "string"},
                    "version": {"type": "integer"},
                    "created_at": {"type": "integer"},
                },
            },
            "TombstoneIn": {
                "type": "object",
                "required": ["version", "deleted_at", "signature"],
                "additionalProperties": False,
                "properties": {
                    "version": {"type": "integer", "minimum": 1, "description": "the deleted record's version"},
                    "deleted_at": {"type": "integer", "minimum": 0},
                    "signature": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{128}$",
                        "description": "creator's Ed25519 signature over canonical('conference-tombstone/v1', "
                        "creator, id, version, deleted_at)",
                    },
                },
            },
            "Deleted": {
                "type": "object",
                "properties": {
                    "error": {"type": "object"},
                    "tombstone": {
                        "type": "object",
                        "properties": {
                            "creator": {"type": "string"},
                            "id": {"type": "string"},
                            "version": {"type": "integer"},
                            "deleted_at": {"type": "integer"},
                            "signature": {"type": "string"},
                            "cert_pem": {"type": "string", "description": "the creator's certificate"},
                        },
                    },
                },
            },
        },
    },
}
