"""The portal against the real API and auth server over HTTP (no browser): the SMART launch,
token exchange, and the WebMail pages, on both database backends.

The users and resources come from tests/factories (test code may use our public
functions); the portal itself is reached only over HTTP, like a browser would.
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests import totp
from tests.factories import make_practice
from tests.support import uid

CSRF_INPUT = re.compile(r"<input[^>]*name=\"csrf_token\"[^>]*>")


def csrf(page: str) -> str:
    tag = CSRF_INPUT.search(page)
    assert tag, "the page must carry a CSRF token"
    value = re.search(r'value="([^"]+)"', tag.group(0))
    assert value
    return html.unescape(value.group(1))


@pytest.fixture(scope="module")
def clients_seeded(settings: Any) -> None:
    from fhirserver.db import make_sessionmaker
    from fhirserver.seed import seed_clients

    maker = make_sessionmaker(settings.database_url)
    with maker() as session:
        seed_clients(session, settings)
        session.commit()
    maker.kw["bind"].dispose()


@pytest.fixture()
def practice(db_session: Any, settings: Any) -> Any:
    return make_practice(db_session, settings)


def login(base: str, face: str, username: str, password: str) -> requests.Session:
    """The whole SMART standalone launch, driven by hand: portal -> auth login -> callback."""
    s = requests.Session()
    start = "/portal/console/" if face == "console" else "/portal/login"
    page = s.get(base + start, timeout=30)
    assert page.status_code == 200 and "/auth/" in page.url, page.url
    resp = s.post(
        base + "/auth/login",
        data={"csrf_token": csrf(page.text), "username": username, "password": password},
        timeout=30,
    )
    if totp.needs_code(resp.url):  # providers: the second factor (tests/totp.py)
        code = totp.code_for(username)
        resp = s.post(base + "/auth/mfa", data={"csrf_token": csrf(resp.text), "code": code}, timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.url.startswith(base + ("/portal/console/" if face == "console" else "/portal/")), resp.url
    return s


def post_form(s: requests.Session, url: str, form_page: str, **fields: str) -> requests.Response:
    return s.post(url, data={"csrf_token": csrf(form_page), **fields}, timeout=30, allow_redirects=False)


def test_login_redirect_carries_pkce_s256_and_nothing_else(
    live_server: Any, settings: Any, clients_seeded: None
) -> None:
    for path, callback, marker in (
        ("/portal/login", "/portal/callback", "patient/Communication.cruds"),
        ("/portal/console/login", "/portal/console/callback", "user/Communication.cruds"),
    ):
        resp = requests.get(live_server.url + path, allow_redirects=False, timeout=30)
        assert resp.status_code == 303
        location = resp.headers["Location"]
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == settings.base_url + "/auth/authorize"
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert set(q) == {
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "aud",
            "code_challenge",
            "code_challenge_method",
        }
        assert q["response_type"] == "code"
        assert q["code_challenge_method"] == "S256"
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])
        assert q["aud"] == settings.base_url + "/fhir"
        assert q["redirect_uri"] == settings.base_url + callback
        assert marker in q["scope"].split()
        assert len(q["state"]) >= 32
        # The authorization server accepts the request: it asks the user to sign in.
        page = requests.get(location, timeout=30)
        assert page.status_code == 200 and "Sign in" in page.text


def test_patient_and_provider_exchange_webmail_through_the_portal(
    live_server: Any, practice: Any, clients_seeded: None
) -> None:
    base = live_server.url
    subject = f"Dose question {uid()}"
    body = f"Can I take it at night? {uid()}"

    patient = login(base, "patient", practice.patient_username, practice.password)
    compose = patient.get(base + "/portal/compose", timeout=30)
    assert compose.status_code == 200
    assert compose.headers["Cache-Control"] == "no-store"
    assert f'value="{practice.practitioner_ref}"' in compose.text
    sent = post_form(
        patient, base + "/portal/compose", compose.text, recipient=practice.practitioner_ref, subject=subject, body=body
    )
    assert sent.status_code == 303, sent.text[:1000]
    assert subject not in sent.headers["Location"] and body not in sent.headers["Location"]
    sent_page = patient.get(base + "/portal/sent", timeout=30).text
    assert subject in sent_page and 'class="tag tag-unread">Unread<' in sent_page

    provider = login(base, "console", practice.provider_username, practice.password)
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 1}
    inbox = provider.get(base + "/portal/console/", timeout=30).text
    assert f"<strong>{subject}</strong>" in inbox
    msg_id = re.search(r'/portal/console/messages/([^"/]+)"', inbox)
    assert msg_id
    message = provider.get(base + f"/portal/console/messages/{msg_id.group(1)}", timeout=30)
    assert body in message.text
    # Opening it wrote nothing; its "Mark as read" form (posted by mark-read.js in a browser) does.
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 1}
    read = post_form(
        provider,
        base + f"/portal/console/messages/{msg_id.group(1)}/mark-read",
        message.text,
        back=f"/portal/console/messages/{msg_id.group(1)}",
    )
    assert read.status_code == 303 and read.headers["Location"] == f"/portal/console/messages/{msg_id.group(1)}"
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 0}
    # The patient's sent item shows that the provider read it.
    assert 'class="tag tag-read">Read<' in patient.get(base + "/portal/sent", timeout=30).text

    unread = post_form(provider, base + f"/portal/console/messages/{msg_id.group(1)}/mark-unread", message.text)
    assert unread.status_code == 303
    assert provider.get(base + "/portal/console/alerts.json", timeout=30).json() == {"count": 1}

    # The provider replies; the reply is threaded and shows in the patient's inbox.
    form = provider.get(base + f"/portal/console/messages/{msg_id.group(1)}/reply", timeout=30).text
    assert f'value="RE: {subject}"' in form
    replied = post_form(
        provider,
        base + f"/portal/console/messages/{msg_id.group(1)}/reply",
        form,
        subject=f"RE: {subject}",
        body="Yes, at night is fine.",
    )
    assert replied.status_code == 303
    patient_inbox = patient.get(base + "/portal/", timeout=30).text
    assert f"<strong>RE: {subject}</strong>" in patient_inbox

    # Logout clears the portal session and ends the sign-in, then shows our signed-out page.
    out = post_form(patient, base + "/portal/logout", patient_inbox)
    assert out.status_code == 303
    assert out.headers["Location"] == "/portal/signed-out"
    again = patient.get(base + "/portal/sent", timeout=30, allow_redirects=False)
    assert again.status_code == 303 and again.headers["Location"].endswith("/portal/login")


def test_api_refusal_is_shown_on_the_form(
    live_server: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    """A patient without an email address cannot get WebMail: the 422 diagnostics are shown."""
    practice = make_practice(db_session, settings, email=False)
    base = live_server.url
    provider = login(base, "console", practice.provider_username, practice.password)
    url = base + f"/portal/console/patients/{practice.patient_id}/compose"
    form = provider.get(url, timeout=30)
    assert form.status_code == 200
    resp = post_form(provider, url, form.text, sender=practice.practitioner_ref, subject="Hi", body="Hello")
    assert resp.status_code == 422
    assert 'class="error-summary"' in resp.text
    summary = re.search(r'class="error-summary".*?<ul>(.*?)</ul>', resp.text, re.S)
    assert summary and "<li>" in summary.group(1)
