"""Opening a message never writes; its "Mark as read" form does (over HTTP, both databases).

The defect: GET /portal/messages/<id> and GET /portal/console/messages/<id> called
$mark-read, so a prefetch, a link scanner or a reload "read" the message. Now the page
carries a CSRF-protected form that mark-read.js posts when the page opens (JSON), and that
works as a plain button without script (303 back to the message).
"""

from __future__ import annotations

import re
from typing import Any

import requests

from fhirserver.core.repository import Repository
from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, message_json, token_for
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import csrf, login, post_form
from tests.portal.test_portal_live import practice as practice
from tests.support import uid


def send_message(db_session: Any, settings: Any, principal: Any, sender: str, recipient: str, patient: str) -> str:
    """A WebMail message created through the repository as ``principal``; its id."""
    stored = Repository(db_session, settings, principal).create(
        "Communication", message_json(sender, recipient, patient, topic=f"Results {uid()}")
    )
    db_session.commit()
    return stored.res_id


def unread_count(base: str, token: str) -> int:
    """The user's unread WebMail, from the API itself."""
    resp = requests.get(
        base + "/fhir/Communication/$unread-count", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert resp.status_code == 200, resp.status_code
    values = [p.get("valueInteger") for p in resp.json().get("parameter", []) if p.get("name") == "count"]
    assert values and isinstance(values[0], int)
    return int(values[0])


def inbox_row(page: str, msg_id: str) -> str:
    row = re.search(rf'<tr class="[a-z]+">(?:(?!</tr>).)*?/messages/{re.escape(msg_id)}".*?</tr>', page, re.S)
    assert row, "the message must be listed"
    return row.group(0)


def test_opening_a_message_leaves_it_unread_and_the_form_marks_it_read(
    live_server: Any, practice: Any, db_session: Any, settings: Any, app: Any, clients_seeded: None
) -> None:
    base = live_server.url
    msg_id = send_message(
        db_session, settings, practice.provider, practice.practitioner_ref, practice.patient_ref, practice.patient_ref
    )
    api_token = token_for(app, settings, practice.patient_user_id, PATIENT_SCOPE, patient=practice.patient_id)
    assert unread_count(base, api_token) == 1
    patient = login(base, "patient", practice.patient_username, practice.password)

    for _ in range(2):  # opening it, and a reload, change nothing
        page = patient.get(base + f"/portal/messages/{msg_id}", timeout=30)
        assert page.status_code == 200
        assert unread_count(base, api_token) == 1
    assert "tag-unread" in inbox_row(patient.get(base + "/portal/", timeout=30).text, msg_id)
    # The page carries the form and the script that posts it (no inline script: the CSP).
    form = re.search(r'<form method="post" class="inline" id="mark-read" action="([^"]+)">', page.text)
    assert form and form.group(1) == f"/portal/messages/{msg_id}/mark-read"
    assert re.search(r'<script src="/portal/static/mark-read\.js[^"]*" defer></script>', page.text)

    # Without script: the button posts, and the browser comes back to the message.
    done = post_form(patient, base + form.group(1), page.text)
    assert done.status_code == 303 and done.headers["Location"] == f"/portal/messages/{msg_id}"
    assert unread_count(base, api_token) == 0
    assert "tag-unread" not in inbox_row(patient.get(base + "/portal/", timeout=30).text, msg_id)
    again = patient.get(base + done.headers["Location"], timeout=30).text
    assert 'id="mark-read"' not in again and "mark-read.js" not in again


def test_console_message_page_and_the_scripts_json_post(
    live_server: Any, practice: Any, db_session: Any, settings: Any, app: Any, clients_seeded: None
) -> None:
    base = live_server.url
    msg_id = send_message(
        db_session, settings, practice.patient, practice.patient_ref, practice.practitioner_ref, practice.patient_ref
    )
    api_token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    provider = login(base, "console", practice.provider_username, practice.password)
    page = provider.get(base + f"/portal/console/messages/{msg_id}", timeout=30)
    assert page.status_code == 200
    assert unread_count(base, api_token) == 1
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 1}
    assert re.search(r'<form method="post" class="inline" id="mark-unread" action="[^"]+" hidden>', page.text)

    # What mark-read.js sends: the form's fields, asking for JSON (no flash, no redirect).
    resp = provider.post(
        base + f"/portal/console/messages/{msg_id}/mark-read",
        data={"csrf_token": csrf(page.text), "back": f"/portal/console/messages/{msg_id}"},
        headers={"Accept": "application/json"},
        timeout=30,
        allow_redirects=False,
    )
    assert resp.status_code == 200 and resp.json() == {"read": True}
    assert unread_count(base, api_token) == 0
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 0}
    again = provider.get(base + f"/portal/console/messages/{msg_id}", timeout=30).text
    assert 'id="mark-read"' not in again
    assert re.search(r'<form method="post" class="inline" id="mark-unread" action="[^"]+">', again)
    # A refusal answers JSON too (the script leaves the button); no CSRF token: refused outright.
    gone = provider.post(
        base + "/portal/console/messages/no-such-message/mark-read",
        data={"csrf_token": csrf(page.text)},
        headers={"Accept": "application/json"},
        timeout=30,
        allow_redirects=False,
    )
    assert gone.status_code == 404 and "error" in gone.json()
    forged = provider.post(
        base + f"/portal/messages/{msg_id}/mark-read", headers={"Accept": "application/json"}, timeout=30
    )
    assert forged.status_code == 400
