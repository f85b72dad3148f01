"""A small FHIR REST client over ``requests``: the portal's only way to data.

Every call carries the signed-in user's bearer token, so the API decides what the
user may see; the portal never widens that. Search values always travel in a POST
body (``_search``), never in a URL, so that they stay out of server and proxy logs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from portal_app.webmail import outcome_messages

HTTP_TIMEOUT = 20
FHIR_JSON = "application/fhir+json"


class ApiError(Exception):
    """The API answered with an error; ``messages`` are its OperationOutcome diagnostics."""

    def __init__(self, status: int, messages: list[str] | None = None) -> None:
        self.status = status
        self.messages = messages or []
        super().__init__(f"FHIR API error {status}")

    @property
    def text(self) -> str:
        return " ".join(self.messages) or default_message(self.status)


def default_message(status: int) -> str:
    return {
        400: "The request was not accepted.",
        401: "Your sign-in has expired.",
        403: "You do not have access to this.",
        404: "This item was not found.",
        409: "This item was changed by someone else. Please try again.",
        412: "This item was changed by someone else. Please try again.",
        422: "The request was not accepted.",
    }.get(status, "The service is not available right now. Please try again later.")


class FhirApi:
    def __init__(self, base: str, access_token: str) -> None:
        self.base = base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}", "Accept": FHIR_JSON}

    def _url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def authorization(self) -> dict[str, str]:
        """The bearer header of this client, for the authorization server's own APIs (launch_api)."""
        return {"Authorization": self._headers["Authorization"]}

    def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = dict(self._headers)
        headers.update(kwargs.pop("headers", {}))
        try:
            resp = requests.request(
                method, self._url(path), headers=headers, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            raise ApiError(503) from exc
        try:
            body = resp.json() if resp.content else {}
        except ValueError:
            body = {}
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, outcome_messages(body))
        if not isinstance(body, dict):
            body = {}
        if not body and resp.headers.get("Location"):
            body = {"_location": resp.headers["Location"]}
        return body

    # -- REST interactions -------------------------------------------------------------------

    def read(self, res_type: str, res_id: str) -> dict[str, Any]:
        return self._send("GET", f"{res_type}/{quote(res_id, safe='')}")

    def create(self, res_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._send(
            "POST",
            res_type,
            json=body,
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
        )

    def search(self, res_type: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        """POST {type}/_search with form-encoded parameters (values never reach a URL)."""
        return self._send(
            "POST",
            f"{res_type}/_search",
            data=params,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def operation(self, path: str, method: str = "POST", params: dict[str, Any] | None = None) -> dict[str, Any]:
        """An operation such as ``Communication/1/$mark-read``; ``params`` become a Parameters body."""
        if method == "GET":
            return self._send("GET", path)
        if not params:
            return self._send("POST", path)  # no body: some operations refuse any parameter
        body = {"resourceType": "Parameters", "parameter": _parameters(params)}
        return self._send("POST", path, json=body, headers={"Content-Type": FHIR_JSON})


def _parameters(params: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, value in params.items():
        if isinstance(value, bool):
            out.append({"name": name, "valueBoolean": value})
        elif isinstance(value, int):
            out.append({"name": name, "valueInteger": value})
        else:
            out.append({"name": name, "valueString": str(value)})
    return out


def created_id(body: dict[str, Any]) -> str | None:
    """The id of a created resource: from the returned body, else from the Location header."""
    if body.get("id"):
        return str(body["id"])
    location = body.get("_location")
    if isinstance(location, str):
        # .../Type/id/_history/n or .../Type/id
        parts = [p for p in location.split("/") if p]
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        return parts[-1] if parts else None
    return None
