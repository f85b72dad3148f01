"""WSGI apps that exist only for the benchmarks (``gunicorn 'bench.apps:without_grant_check()'``).

The real server, wired exactly as ``fhirserver.wsgi`` wires it, except that bearer tokens
skip the per-request grant lookup (signature and times are still checked, with the same
per-process cache). Measured beside the real server in the same run, it prices the
revocation check; it is never a deployable configuration.
"""

from __future__ import annotations

from typing import Any

from fhirserver.config import load_settings
from fhirserver.wsgi import create_wsgi
from smart_auth.resource_server import SmartTokenAuthority


def without_grant_check() -> Any:
    settings = load_settings()
    return create_wsgi(settings, tokens=SmartTokenAuthority(settings, check_grants=False))
