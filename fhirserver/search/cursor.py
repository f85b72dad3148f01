"""Opaque paging cursors: the whole search plus the position, sealed with AES-GCM.

A next link must not carry search values (``name=Smith`` is PHI, and URLs end up in
logs), so the cursor holds them encrypted and authenticated under a key derived from
the app secret. The resource type is bound into the associated data: a cursor made
for one type fails to open on another, exactly like a tampered one. Every failure is
one 400 that says nothing about why, so the cursor is no oracle.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from fhirserver.core.crypto import seal, unseal
from fhirserver.core.errors import FhirError

VERSION = 1
PURPOSE = b"fhirserver search cursor v1|"
MAX_CHARS = 16_384
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def invalid_cursor() -> FhirError:
    return FhirError(400, "invalid", "The _cursor is not valid for this search; start the search again", ["_cursor"])


def seal_cursor(key: bytes, res_type: str, state: dict[str, Any]) -> str:
    """Encrypt ``state`` (JSON-able) into a URL-safe token bound to ``res_type``."""
    data = json.dumps({"v": VERSION, **state}, separators=(",", ":")).encode()
    blob = seal(data, key, PURPOSE + res_type.encode())
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def open_cursor(key: bytes, res_type: str, token: str) -> dict[str, Any]:
    """The state sealed in ``token``; FhirError 400 if it is malformed, forged or foreign."""
    if not token or len(token) > MAX_CHARS or not _B64URL.match(token):
        raise invalid_cursor()
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise invalid_cursor() from exc
    data = unseal(blob, key, PURPOSE + res_type.encode())
    if data is None:
        raise invalid_cursor()
    state = json.loads(data)
    if not isinstance(state, dict) or state.get("v") != VERSION:
        raise invalid_cursor()
    return state
