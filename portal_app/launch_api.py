"""The authorization server's EHR-launch API, called with the console user's own token.

The console lists the SMART apps registered for the EHR launch (``GET /auth/apps``) and
mints a launch for the open chart (``POST /auth/launch``); the server decides who may
launch what for which patient (``smart_auth.launch_views``), the console only asks. The
authorization server sits beside the FHIR API on the same origin (``/auth`` next to
``/fhir``), so its URL derives from the FHIR client's base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from portal_app.fhir_api import HTTP_TIMEOUT, ApiError, FhirApi


@dataclass(frozen=True)
class SmartApp:
    client_id: str
    name: str
    launch_url: str


def _auth_url(client: FhirApi, path: str) -> str:
    base = client.base[: -len("/fhir")] if client.base.endswith("/fhir") else client.base
    return f"{base}/auth/{path}"


def _send(client: FhirApi, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        resp = requests.request(
            method,
            _auth_url(client, path),
            headers={**client.authorization(), "Accept": "application/json"},
            timeout=HTTP_TIMEOUT,
            allow_redirects=False,
            **kwargs,
        )
    except requests.RequestException as exc:
        raise ApiError(503) from exc
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400 or not isinstance(body, dict):
        description = body.get("error_description") if isinstance(body, dict) else None
        raise ApiError(resp.status_code if resp.status_code >= 400 else 502, [description] if description else [])
    return body


def apps(client: FhirApi) -> list[SmartApp]:
    """The SMART apps that can be launched from the console, by name."""
    body = _send(client, "GET", "apps")
    out = []
    for item in body.get("apps") or []:
        if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("client_id", "name", "launch_url")):
            out.append(SmartApp(item["client_id"], item["name"], item["launch_url"]))
    return out


def launch(client: FhirApi, client_id: str, patient: str) -> str:
    """Mint a launch of app ``client_id`` for ``patient``; returns the URL to send the browser to."""
    body = _send(client, "POST", "launch", json={"client_id": client_id, "patient": patient})
    url = body.get("launch_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ApiError(502)
    return url
