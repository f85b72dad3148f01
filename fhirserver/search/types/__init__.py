"""One handler per search parameter type, looked up by the parameter's ``type``."""

from __future__ import annotations

from fhirserver.search.types import date, reference, string, token
from fhirserver.search.types.base import TypeHandler

HANDLERS: dict[str, TypeHandler] = {h.name: h for h in (string.HANDLER, token.HANDLER, reference.HANDLER, date.HANDLER)}


def handler_for(param_type: str) -> TypeHandler:
    return HANDLERS[param_type]
