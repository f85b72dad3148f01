"""Bad input to the portal and the console: a 4xx page, never a 500 (or a 502 for an API 500),
no echo of the bad value outside the form field it was typed into, and nothing written.

The first tests need no API (the portal app alone); the others drive the portal over HTTP
against the real API on both databases, as a browser would.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from fhirserver.models import ResourceRow
from tests.portal.test_portal_app import ROOT, get, post, sign_in
from tests.portal.test_portal_app import portal as portal  # the fixtures, re-exported
from tests.portal.test_portal_app import web as web
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import csrf, login
from tests.portal.test_portal_live import practice as practice

SENTINEL = "Qz7!sentinel"
TOO_LARGE = {"csrf_token": "x", "body": "x" * (300 * 1024)}  # over the portal's 256 KiB


# -- without the API ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("realm", "claims", "path"),
    [
        ("patient", {"role": "patient", "patient": "p1", "fhirUser": "Patient/p1"}, "/compose"),
        ("patient", {"role": "patient", "patient": "p1", "fhirUser": "Patient/p1"}, "/messages/m1/reply"),
        ("patient", {"role": "patient", "patient": "p1", "fhirUser": "Patient/p1"}, "/logout"),
        ("patient", {"role": "patient", "patient": "p1", "fhirUser": "Patient/p1"}, "/messages/m1/mark-read"),
        ("console", {"role": "provider", "fhirUser": "Practitioner/dr1"}, "/console/patients/p1/reset-password"),
        ("console", {"role": "provider", "fhirUser": "Practitioner/dr1"}, "/console/patients"),
        ("console", {"role": "provider", "fhirUser": "Practitioner/dr1"}, "/console/messages/m1/mark-read"),
        ("console", {"role": "provider", "fhirUser": "Practitioner/dr1"}, "/console/provider-contacts/new"),
        ("", {}, "/logout"),
    ],
)
def test_too_large_form_is_413_not_500(web: Any, realm: str, claims: dict[str, Any], path: str) -> None:
    """Rendering the 413 page read the posted form again (the button form in the page context)."""
    if realm:
        sign_in(web, realm, claims)
    resp = post(web, path, data=TOO_LARGE)
    assert resp.status_code == 413, resp.get_data(as_text=True)[:300]
    assert "text/html" in resp.content_type


@pytest.mark.parametrize(
    "back",
    [
        "/portal/console/\r\nX-Injected: 1",
        "/portal/console/\nx",
        "/portal/console/\x00x",
        "/portal/console/\tx",
        "/portal/console/\u2028x",
    ],
)
def test_back_link_with_control_characters_is_not_followed(web: Any, back: str) -> None:
    """A line break in ``back`` went into the Location header: a 500 (or header injection)."""
    from portal_app import console_views

    with web.application.test_request_context("/console/x", base_url=ROOT, method="POST", data={"back": back}):
        assert console_views._safe_back("/portal/console/") == "/portal/console/"


def test_bad_paths_and_methods_are_4xx(web: Any) -> None:
    sign_in(web, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"})
    for method, path in [
        ("PUT", "/compose"),
        ("DELETE", "/console/patients"),
        ("PATCH", "/console/"),
        ("GET", "/console/messages/m1/mark-read"),
        ("GET", "/messages/m1/mark-read"),
        ("PUT", "/console/patients/p1/reset-password"),
        ("POST", "/console/patients/p1/portal-sheet"),
        ("GET", f"/console/patients/{SENTINEL}/portal-sheet"),
        ("GET", f"/{SENTINEL}"),
        ("GET", f"/console/{SENTINEL}"),
        ("GET", "/static/%00x"),
    ]:
        resp = web.open(path, method=method, base_url=ROOT)
        assert 400 <= resp.status_code < 500, (method, path, resp.status_code)
        assert SENTINEL not in resp.get_data(as_text=True)
    assert get(web, "/callback?code=%00&state=%FF").status_code == 400


# -- over HTTP, against the API -------------------------------------------------------------------


def _rows(db_session: Any) -> int:
    db_session.rollback()
    count = db_session.scalar(select(func.count()).select_from(ResourceRow).where(ResourceRow.res_type != "AuditEvent"))
    db_session.rollback()  # never hold a transaction (SQLite: the write lock) while the server works
    return int(count)


def _page_ok(resp: requests.Response, *statuses: int) -> str:
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    return resp.text


BAD_IDS = ["$" + SENTINEL, "a" * 70 + SENTINEL, SENTINEL, "%00" + SENTINEL, "%FF" + SENTINEL, "x%3F_format%3Dxml"]


def test_bad_ids_in_portal_and_console_urls(
    live_server: Any, practice: Any, clients_seeded: None, db_session: Any
) -> None:
    base = live_server.url
    patient = login(base, "patient", practice.patient_username, practice.password)
    provider = login(base, "console", practice.provider_username, practice.password)
    token = csrf(provider.get(base + "/portal/console/", timeout=30).text)
    patient_token = csrf(patient.get(base + "/portal/", timeout=30).text)
    before = _rows(db_session)
    for bad in BAD_IDS:
        for session, method, path in [
            (patient, "GET", f"/portal/messages/{bad}"),
            (patient, "GET", f"/portal/messages/{bad}/reply"),
            (provider, "GET", f"/portal/console/messages/{bad}"),
            (provider, "GET", f"/portal/console/messages/{bad}/reply"),
            (provider, "GET", f"/portal/console/patients/{bad}"),
            (provider, "GET", f"/portal/console/patients/{bad}/compose"),
            (provider, "GET", f"/portal/console/patients/{bad}/reset-password"),
            (provider, "GET", f"/portal/console/patients/{bad}/portal-sheet"),
        ]:
            resp = session.request(method, base + path, timeout=30, allow_redirects=False)
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:300])
            assert SENTINEL not in resp.text, path
        for op in ("mark-read", "mark-unread"):
            resp = provider.post(
                base + f"/portal/console/messages/{bad}/{op}",
                timeout=30,
                allow_redirects=False,
                data={"csrf_token": token, "back": f"/portal/console/\r\n{SENTINEL}"},
            )
            assert resp.status_code == 303, (bad, op, resp.status_code, resp.text[:300])
            assert resp.headers["Location"].endswith("/portal/console/")
        for op in ("grant-access", "reset-password"):
            resp = provider.post(
                base + f"/portal/console/patients/{bad}/{op}",
                data={"csrf_token": token},
                timeout=30,
                allow_redirects=False,
            )
            assert 400 <= resp.status_code < 500 and SENTINEL not in resp.text, (bad, op, resp.status_code)
        for accept in ("text/html", "application/json"):
            resp = patient.post(
                base + f"/portal/messages/{bad}/mark-read",
                data={"csrf_token": patient_token},
                headers={"Accept": accept},
                timeout=30,
                allow_redirects=False,
            )
            if accept == "text/html":
                assert resp.status_code == 303 and resp.headers["Location"] == "/portal/", (bad, resp.status_code)
            else:
                assert resp.status_code == 404 and SENTINEL not in resp.text, (bad, resp.status_code)
    assert _rows(db_session) == before


def test_form_values_the_api_refuses(live_server: Any, practice: Any, clients_seeded: None, db_session: Any) -> None:
    """NUL characters reached PostgreSQL through the API (a 500 there, a 502 here); the API now
    refuses them with a 400, shown on the form or as a 4xx page."""
    base = live_server.url
    patient = login(base, "patient", practice.patient_username, practice.password)
    provider = login(base, "console", practice.provider_username, practice.password)
    before = _rows(db_session)

    compose = _page_ok(patient.get(base + "/portal/compose", timeout=30), 200)
    for fields in (
        {"subject": f"a\x00{SENTINEL}", "body": "b"},
        {"subject": "s", "body": f"\x00{SENTINEL}"},
        {"subject": "s" * 5000, "body": "b"},
        {"subject": "  ", "body": "  "},
    ):
        resp = patient.post(
            base + "/portal/compose",
            timeout=30,
            allow_redirects=False,
            data={"csrf_token": csrf(compose), "recipient": practice.practitioner_ref, **fields},
        )
        _page_ok(resp, 422)
    resp = patient.post(
        base + "/portal/compose",
        timeout=30,
        allow_redirects=False,
        data={"csrf_token": csrf(compose), "recipient": f"Practitioner/{SENTINEL}", "subject": "s", "body": "b"},
    )
    assert SENTINEL not in _page_ok(resp, 422)

    chart = _page_ok(provider.get(base + f"/portal/console/patients/{practice.patient_id}", timeout=30), 200)
    token = csrf(chart)
    for name in (f"\x00{SENTINEL}", "%FF", "a\\", SENTINEL * 20):
        resp = provider.post(
            base + "/portal/console/patients",
            data={"csrf_token": token, "name": name},
            timeout=30,
            allow_redirects=False,
        )
        assert resp.status_code in (200, 400), (name, resp.status_code, resp.text[:300])
    resp = provider.post(
        base + "/portal/console/patients",
        timeout=30,
        allow_redirects=False,
        data=b"csrf_token=" + token.encode() + b"&name=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code in (200, 400), resp.status_code
    resp = provider.post(
        base + f"/portal/console/patients/{practice.patient_id}/compose",
        timeout=30,
        allow_redirects=False,
        data={"csrf_token": token, "sender": f"Practitioner/{SENTINEL}", "subject": "s", "body": "b"},
    )
    assert SENTINEL not in _page_ok(resp, 422)
    resp = provider.post(
        base + f"/portal/console/patients/{practice.patient_id}/compose",
        timeout=30,
        allow_redirects=False,
        data={"csrf_token": token, "sender": practice.practitioner_ref, "subject": f"\x00{SENTINEL}", "body": "b"},
    )
    _page_ok(resp, 422)

    contact = {
        "first_name": "Ann",
        "last_name": "Lee",
        "birth_date": "1970-01-01",
        "phone": "555-0100",
        "email": "ann@example.org",
        "line1": "1 Main St",
        "city": "Springfield",
        "state": "IL",
        "postal_code": "12345",
    }
    for field, value in (
        ("first_name", f"\x00{SENTINEL}"),
        ("line2", f"\x00{SENTINEL}"),
        ("birth_date", SENTINEL),
        ("birth_date", "2020-02-30"),
        ("email", f"a@b.c\x00{SENTINEL}"),
    ):
        resp = provider.post(
            base + "/portal/console/provider-contacts/new",
            timeout=30,
            allow_redirects=False,
            data={"csrf_token": token, **contact, field: value},
        )
        _page_ok(resp, 422)
    assert _rows(db_session) == before
