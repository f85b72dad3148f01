"""Plain request and response objects between the web adapter and the FHIR core."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FHIR_JSON = "application/fhir+json; charset=utf-8"


@dataclass
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, without leading slash: "Patient/1/_history"
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    base_url: str = ""  # the FHIR base, e.g. http://127.0.0.1:8080/fhir

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class FhirResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = FHIR_JSON

    @classmethod
    def json(cls, status: int, data: dict[str, Any], **headers: str) -> FhirResponse:
        return cls(status, json.dumps(data, separators=(",", ":")).encode(), dict(headers))
