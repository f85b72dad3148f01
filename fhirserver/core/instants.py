"""FHIR instants: the server's clock, always UTC, written with milliseconds and a Z."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fhirserver.core.errors import FhirError

# FHIR's instant: a full date and time to the second (fractions allowed) with a zone.
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def now_utc() -> datetime:
    return datetime.now(UTC)


def instant(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str, name: str) -> datetime:
    """A FHIR instant from a request parameter ``name``, or a 400 that names it."""
    if not INSTANT_RE.match(text):
        raise FhirError(400, "invalid", f"{name} must be an instant such as 2026-01-31T12:00:00Z", [name])
    try:
        fraction = re.search(r"\.(\d+)", text)
        trimmed = text if not fraction else text.replace(fraction.group(0), "." + fraction.group(1)[:6].ljust(6, "0"))
        return datetime.fromisoformat(trimmed.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:  # 2026-02-30T...: the right shape, not a date
        raise FhirError(400, "invalid", f"{name} is not a valid instant", [name]) from exc
