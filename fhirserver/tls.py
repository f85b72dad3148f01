"""The TLS policy of ``fhirserver serve --certfile/--keyfile`` (checklist D7, HIPAA 164.312(e)).

TLS normally ends at a reverse proxy (docs/deploy.md), which must hold the same line;
when gunicorn itself serves https, this is its ``ssl_context`` hook: TLS 1.2 or newer
only, whatever the OpenSSL build or its configuration would otherwise allow, and for
TLS 1.2 only forward-secret AEAD cipher suites (Mozilla's "intermediate" profile). TLS 1.3
suites are OpenSSL's defaults, all of them sound.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


def server_context(_config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn's context (certificate and key loaded), held to TLS 1.2+ with strong suites."""
    context = default_factory()
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
