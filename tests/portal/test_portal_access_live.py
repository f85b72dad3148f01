"""Portal access from the console, over HTTP against the real API (both databases).

The defect: "Grant portal access" rendered the credentials in the POST response (a reload
re-posted it) and could replace a password the patient had chosen. Now the sheet is
POST-redirect-GET and shown once, a second grant is refused with the server's 409 reason,
and a new password needs "Reset portal password", confirmed by a POST.
"""

from __future__ import annotations

import html
import re
from typing import Any

import requests

from tests.factories import make_patient
from tests.portal.portal_sessions import cookie_of, portal_store
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import csrf, login, post_form
from tests.portal.test_portal_live import practice as practice

SHOWN_ONCE = "This sheet was shown once"


def sign_in_result(base: str, username: str, password: str) -> str:
    """Where a patient sign-in with this password ends: "portal", "new-password" (a one-time
    password: the first login asks for a new one) or "refused"."""
    s = requests.Session()
    page = s.get(base + "/portal/login", timeout=30)
    resp = s.post(
        base + "/auth/login",
        data={"csrf_token": csrf(page.text), "username": username, "password": password},
        timeout=30,
    )
    if resp.url.startswith(base + "/auth/password"):
        return "new-password"
    if resp.status_code == 200 and resp.url.startswith(base + "/portal/"):
        return "portal"
    assert "The username or password is not correct." in resp.text, (resp.status_code, resp.url)
    return "refused"


def credentials(page: str) -> tuple[str, str]:
    username = re.search(r'id="sheet-username">([^<]+)<', page)
    password = re.search(r'id="sheet-password">([^<]+)<', page)
    assert username and password and password.group(1).strip()
    return html.unescape(username.group(1).strip()), html.unescape(password.group(1).strip())


def test_grant_sheet_is_post_redirect_get_and_shown_once(
    live_server: Any, practice: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    base = live_server.url
    pid = make_patient(db_session, settings, practice.practitioner_ref)
    provider = login(base, "console", practice.provider_username, practice.password)
    chart = provider.get(base + f"/portal/console/patients/{pid}", timeout=30)
    assert chart.status_code == 200
    assert "Grant portal access" in chart.text and f"/portal/console/patients/{pid}/reset-password" in chart.text

    granted = post_form(provider, base + f"/portal/console/patients/{pid}/grant-access", chart.text)
    assert granted.status_code == 303, granted.text[:500]
    assert granted.headers["Location"] == f"/portal/console/patients/{pid}/portal-sheet"
    # Between the POST and the GET the password waits in the server-side session only, sealed.
    store = portal_store(settings)
    sid = cookie_of(provider.cookies)
    waiting = (store.load(sid) or {}).get("portal_sheets", {}).get(pid)
    assert waiting and waiting["password"]
    assert waiting["password"] not in granted.headers.get("Set-Cookie", "")

    sheet = provider.get(base + granted.headers["Location"], timeout=30, allow_redirects=False)
    assert sheet.status_code == 200
    assert sheet.headers["Cache-Control"] == "no-store"
    assert "Shown once" in sheet.text
    username, password = credentials(sheet.text)
    assert password == waiting["password"]
    assert pid not in str((store.load(sid) or {}).get("portal_sheets", {})), "the GET takes it out of the session"

    # A reload shows the "shown once" page: no password, nothing issued, the reset path offered.
    reload = provider.get(base + granted.headers["Location"], timeout=30, allow_redirects=False)
    assert reload.status_code == 410
    assert reload.headers["Cache-Control"] == "no-store"
    assert SHOWN_ONCE in reload.text and password not in reload.text
    assert f"/portal/console/patients/{pid}/reset-password" in reload.text
    # The one-time password of the sheet is the patient's: the first sign-in asks for a new one.
    assert sign_in_result(base, username, password) == "new-password"


def test_second_grant_is_refused_with_the_servers_reason_and_the_password_still_works(
    live_server: Any, practice: Any, clients_seeded: None
) -> None:
    base = live_server.url
    provider = login(base, "console", practice.provider_username, practice.password)
    chart_url = base + f"/portal/console/patients/{practice.patient_id}"
    chart = provider.get(chart_url, timeout=30)
    again = post_form(provider, base + f"/portal/console/patients/{practice.patient_id}/grant-access", chart.text)
    assert again.status_code == 303
    assert again.headers["Location"] == f"/portal/console/patients/{practice.patient_id}"
    shown = provider.get(chart_url, timeout=30).text
    notice = re.search(r'<p class="notice notice-portal-access" role="alert">(.*?)</p>', shown, re.S)
    assert notice, "the 409 must be shown on the chart"
    assert "already has an active portal account" in notice.group(1)
    assert f'href="/portal/console/patients/{practice.patient_id}/reset-password"' in notice.group(1)
    assert 'id="sheet-password"' not in shown
    assert sign_in_result(base, practice.patient_username, practice.password) == "portal"


def test_reset_needs_the_confirmation_post_and_replaces_the_password(
    live_server: Any, practice: Any, clients_seeded: None
) -> None:
    base = live_server.url
    patient = login(base, "patient", practice.patient_username, practice.password)
    provider = login(base, "console", practice.provider_username, practice.password)
    reset_url = base + f"/portal/console/patients/{practice.patient_id}/reset-password"

    # The GET only asks; it changes nothing (the patient stays signed in, the password works).
    confirm = provider.get(reset_url, timeout=30, allow_redirects=False)
    assert confirm.status_code == 200
    assert confirm.headers["Cache-Control"] == "no-store"
    assert "This signs the patient out everywhere and replaces their password with a new one-time password" in (
        " ".join(confirm.text.split())
    )
    assert re.search(r"<button type=\"submit\">Reset password</button>", confirm.text)
    assert f'href="/portal/console/patients/{practice.patient_id}">Cancel</a>' in confirm.text
    assert patient.get(base + "/portal/sent", timeout=30, allow_redirects=False).status_code == 200
    assert sign_in_result(base, practice.patient_username, practice.password) == "portal"

    done = post_form(provider, reset_url, confirm.text)
    assert done.status_code == 303
    assert done.headers["Location"] == f"/portal/console/patients/{practice.patient_id}/portal-sheet"
    sheet = provider.get(base + done.headers["Location"], timeout=30)
    assert sheet.status_code == 200 and "New portal password" in sheet.text
    username, password = credentials(sheet.text)
    assert username == practice.patient_username
    reload = provider.get(base + done.headers["Location"], timeout=30)
    assert reload.status_code == 410 and password not in reload.text

    # The patient's portal session ended with the reset; the old password is refused, the new
    # one-time password works and the first sign-in demands a new password.
    signed_out = patient.get(base + "/portal/sent", timeout=30, allow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["Location"].endswith("/portal/login")
    assert sign_in_result(base, practice.patient_username, practice.password) == "refused"
    assert sign_in_result(base, practice.patient_username, password) == "new-password"


def test_reset_without_an_account_is_refused_on_the_chart(
    live_server: Any, practice: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    base = live_server.url
    pid = make_patient(db_session, settings, practice.practitioner_ref)
    provider = login(base, "console", practice.provider_username, practice.password)
    url = base + f"/portal/console/patients/{pid}/reset-password"
    resp = post_form(provider, url, provider.get(url, timeout=30).text)
    assert resp.status_code == 303 and resp.headers["Location"] == f"/portal/console/patients/{pid}"
    chart = provider.get(base + resp.headers["Location"], timeout=30).text
    assert "has no portal account" in chart
    assert "notice-portal-access" not in chart  # no reset offered for an account that does not exist
    assert provider.get(base + f"/portal/console/patients/{pid}/portal-sheet", timeout=30).status_code == 410
