"""Consent: every scope a ticked box, deselection honoured exactly, the offline warning (A12, C8, F6)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.auth.support import (
    authorize_params,
    csrf_from,
    exchange,
    login,
    make_client,
    new_web_client,
    pkce_pair,
    query_of,
)

SCOPE = "launch/patient openid fhirUser patient/Patient.rs patient/Communication.rs offline_access"
BOX = re.compile(r'<input type="checkbox" name="scope" id="[^"]+" value="([^"]+)"( checked)?>')


@pytest.fixture()
def third(db_session: Any) -> Any:
    return make_client(db_session, first_party=False)


def _consent_page(app: Any, settings: Any, client: Any, username: str, scope: str = SCOPE) -> tuple[Any, str, str]:
    """Authorize as a patient up to the consent page: (web client, its HTML, PKCE verifier)."""
    web = new_web_client(app)
    verifier, challenge = pkce_pair()
    r = web.get("/auth/authorize", query_string=authorize_params(settings, client, scope, challenge))
    r = login(web, username)
    r = web.get(r.headers["Location"])
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/authorize/consent"), r.data[:300]
    page = web.get("/auth/authorize/consent")
    assert page.status_code == 200
    return web, page.get_data(as_text=True), verifier


def _approve(web: Any, html: str, client: Any, verifier: str, ticked: list[str]) -> dict[str, Any]:
    """POST the consent form with ``ticked``, follow to the code and exchange it: the token response."""
    r = web.post("/auth/authorize/consent", data={"csrf_token": csrf_from(html), "action": "approve", "scope": ticked})
    assert r.status_code == 303, r.data[:300]
    r = web.get(r.headers["Location"])
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert "code" in q, q
    token = exchange(web, client, q["code"], verifier)
    assert token.status_code == 200, token.data
    return token.json  # type: ignore[no-any-return]


def test_A12_every_scope_is_a_ticked_box_and_offline_access_is_warned(app, settings, practice, third) -> None:
    _, html, _ = _consent_page(app, settings, third, practice.patient_username)
    boxes = BOX.findall(html)
    assert [v for v, _ in boxes] == SCOPE.split()
    assert all(checked for _, checked in boxes)  # ticked by default
    assert "this app can keep access after you sign out, until you revoke it" in " ".join(html.split())
    # The control: without offline_access there is no warning.
    _, html, _ = _consent_page(app, settings, third, practice.patient_username, SCOPE.replace(" offline_access", ""))
    assert "until you revoke it" not in html and 'id="offline-warning"' not in html


def test_C8_A12_deselected_type_is_absent_from_scope_and_its_search_is_403(app, settings, practice, third) -> None:
    web, html, verifier = _consent_page(app, settings, third, practice.patient_username)
    kept = [s for s in SCOPE.split() if s != "patient/Communication.rs"]
    body = _approve(web, html, third, verifier, kept)
    assert body["scope"].split() == kept
    assert body["patient"] == practice.patient_id and "refresh_token" in body
    api = new_web_client(app)
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert api.get("/fhir/Communication", headers=auth).status_code == 403
    assert api.get(f"/fhir/Patient/{practice.patient_id}", headers=auth).status_code == 200
    assert api.get("/fhir/Patient", headers=auth).status_code == 200


def test_A12_a_post_never_widens_the_grant(app, settings, practice, third) -> None:
    web, html, verifier = _consent_page(
        app, settings, third, practice.patient_username, "launch/patient patient/Patient.rs"
    )
    body = _approve(
        web,
        html,
        third,
        verifier,
        ["launch/patient", "patient/Patient.rs", "patient/Communication.cruds", "user/*.cruds"],
    )
    assert body["scope"].split() == ["launch/patient", "patient/Patient.rs"]
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert new_web_client(app).get("/fhir/Communication", headers=auth).status_code == 403


def test_A12_deselecting_launch_patient_removes_the_patient_context(app, settings, practice, third) -> None:
    web, html, verifier = _consent_page(app, settings, third, practice.patient_username)
    assert "none of the patient record permissions" in html  # the page says what unticking does
    body = _approve(web, html, third, verifier, [s for s in SCOPE.split() if s != "launch/patient"])
    # No patient context, so none of the patient/ scopes that need one.
    assert body["scope"].split() == ["openid", "fhirUser", "offline_access"]
    assert "patient" not in body and "id_token" in body
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert new_web_client(app).get(f"/fhir/Patient/{practice.patient_id}", headers=auth).status_code in (403, 404)


def test_A12_deselecting_openid_and_offline_access(app, settings, practice, third) -> None:
    web, html, verifier = _consent_page(app, settings, third, practice.patient_username)
    body = _approve(web, html, third, verifier, ["launch/patient", "fhirUser", "patient/Patient.rs"])
    # fhirUser is an id_token claim: it goes with openid; no offline_access, no refresh token.
    assert body["scope"].split() == ["launch/patient", "patient/Patient.rs"]
    assert "id_token" not in body and "refresh_token" not in body


def test_A12_unticking_everything_denies(app, settings, practice, third) -> None:
    web, html, _ = _consent_page(app, settings, third, practice.patient_username)
    r = web.post("/auth/authorize/consent", data={"csrf_token": csrf_from(html), "action": "approve"})
    if r.status_code == 303:
        r = web.get(r.headers["Location"])
    q = query_of(r.headers["Location"])
    assert q.get("error") == "access_denied" and "code" not in q


def test_F6_consent_post_needs_its_csrf_token(app, settings, practice, third) -> None:
    web, html, verifier = _consent_page(app, settings, third, practice.patient_username)
    for token in (None, "not-the-token"):
        data: dict[str, Any] = {"action": "approve", "scope": SCOPE.split()}
        if token:
            data["csrf_token"] = token
        r = web.post("/auth/authorize/consent", data=data)
        assert r.status_code == 400 and "Location" not in r.headers
    # The page's own token still works afterwards.
    assert _approve(web, html, third, verifier, SCOPE.split())["scope"].split() == SCOPE.split()


def test_A12_a_scope_can_be_narrowed_to_reading_only(app, settings, practice, third) -> None:
    """Beside a scope that also writes, the page offers "only read": the token gets its r/s part."""
    scope = "launch/patient patient/Patient.rs patient/Communication.cruds"
    web, html, verifier = _consent_page(app, settings, third, practice.patient_username, scope)
    offered = re.findall(r'name="scope" id="scope-\d+" value="([^"]+)"', html)
    writing = next(s for s in offered if s.startswith("patient/Communication."))
    read_only = re.findall(r'name="read_only" id="ro-\d+" value="([^"]+)"', html)
    assert read_only == [writing]  # offered only where there is something to take away
    r = web.post(
        "/auth/authorize/consent",
        data={
            "csrf_token": csrf_from(html),
            "action": "approve",
            "scope": offered,
            # A read-only mark on a scope never offered, or on patient/Patient.rs, changes nothing.
            "read_only": [writing, "patient/Practitioner.cruds", "patient/Patient.rs"],
        },
    )
    assert r.status_code == 303, r.data[:300]
    r = web.get(r.headers["Location"])
    body = exchange(web, third, query_of(r.headers["Location"])["code"], verifier).json
    assert sorted(body["scope"].split()) == sorted(["launch/patient", "patient/Patient.rs", "patient/Communication.rs"])
    api = new_web_client(app)
    auth = {"Authorization": f"Bearer {body['access_token']}", "Content-Type": "application/fhir+json"}
    assert api.get("/fhir/Communication", headers=auth).status_code == 200
    sent = api.post("/fhir/Communication", headers=auth, data="{}")
    assert sent.status_code == 403, sent.data[:300]
