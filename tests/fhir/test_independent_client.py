"""SMART's own Python client (fhirclient, from PyPI) completes a standalone launch as a third-party
public app, with the patient's consent, and reads the patient's WebMail over the real HTTP server.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import requests
from fhirclient import client as fhir_client
from fhirclient.models.communication import Communication

from fhirserver.core.repository import Repository
from tests.auth.support import make_client
from tests.factories import make_practice, message_json
from tests.support import uid


def _follow(browser: requests.Session, base: str, response: requests.Response, stop_prefix: str) -> str:
    """Follow redirects by hand until one leaves the server for the app's redirect URI."""
    while response.status_code in (301, 302, 303, 307):
        location = urljoin(base + "/", response.headers["Location"])
        if location.startswith(stop_prefix):
            return location
        response = browser.get(location, allow_redirects=False, timeout=10)
    raise AssertionError(f"stopped at {response.status_code} {response.url}: {response.text[:200]}")


def test_fhirclient_standalone_launch_reads_the_patients_messages(live_server, db_session, settings):
    practice = make_practice(db_session, settings)
    topic = f"Your results {uid()}"
    Repository(db_session, settings, practice.provider).create(
        "Communication", message_json(practice.practitioner_ref, practice.patient_ref, topic=topic)
    )
    app_ = make_client(
        db_session,
        first_party=False,
        confidential=False,
        scope="launch/patient openid fhirUser patient/Communication.rs patient/Patient.rs",
    )
    db_session.commit()
    base = live_server.url

    smart = fhir_client.FHIRClient(
        settings={
            "app_id": app_.client_id,
            "api_base": settings.fhir_base,
            "redirect_uri": app_.redirect_uri,
            "scope": "launch/patient openid fhirUser patient/Communication.rs patient/Patient.rs",
        }
    )
    authorize_url = smart.authorize_url  # discovered from /metadata's oauth-uris extension
    assert "code_challenge_method=S256" in authorize_url

    browser = requests.Session()
    r = browser.get(authorize_url, allow_redirects=False, timeout=10)
    login_page = browser.get(urljoin(base, r.headers["Location"]), timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text).group(1)
    r = browser.post(
        f"{base}/auth/login",
        data={"csrf_token": csrf, "username": practice.patient_username, "password": practice.password},
        allow_redirects=False,
        timeout=10,
    )
    r = browser.get(urljoin(base, r.headers["Location"]), allow_redirects=False, timeout=10)
    # A third-party app: the consent page lists the scopes; the patient approves them.
    consent = browser.get(urljoin(base, r.headers["Location"]), timeout=10) if r.status_code in (302, 303) else r
    assert "patient/Communication.rs" in consent.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent.text).group(1)
    scopes = re.findall(r'name="scope" id="[^"]+" value="([^"]+)"', consent.text)
    action = re.search(r'<form[^>]*action="([^"]*)"', consent.text)
    target = urljoin(consent.url, action.group(1) if action and action.group(1) else consent.url)
    r = browser.post(
        target, data={"csrf_token": csrf, "scope": scopes, "action": "approve"}, allow_redirects=False, timeout=10
    )
    callback = _follow(browser, base, r, app_.redirect_uri)

    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == practice.patient_id
    bundle = Communication.where(struct={"subject": practice.patient_ref}).perform(smart.server)
    topics = [e.resource.topic.text for e in bundle.entry or []]
    assert topic in topics
