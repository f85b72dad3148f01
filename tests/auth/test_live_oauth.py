"""An independent OAuth client (Authlib's OAuth2Session) against the real HTTP server.

The browser part (login form with its CSRF token, redirects) is played with
``requests``, following redirects by hand; the app part is Authlib's client with
PKCE S256, exactly as a third-party SMART app would use it.
"""

from __future__ import annotations

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from tests.auth.support import csrf_from, make_client
from tests.factories import patient_json, practitioner_json
from tests.support import uid

SCOPE = "launch/patient openid fhirUser patient/Patient.rs offline_access"


def test_authlib_client_gets_and_refreshes_tokens_over_http(live_server, db_session, settings) -> None:
    from smart_auth import accounts

    repo = Repository(db_session, settings, system_principal("tests"))
    doc = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}")).res_id
    pid = repo.create("Patient", patient_json([f"Practitioner/{doc}"], family=f"Live{uid()}")).res_id
    username = f"live{uid()}"
    accounts.create_user(
        db_session,
        username=username,
        password="violet tulips at dawn",
        role="patient",
        settings=settings,
        fhir_user=f"Patient/{pid}",
    )
    app_ = make_client(db_session, confidential=True, first_party=True)
    db_session.commit()
    base = live_server.url

    oauth = OAuth2Session(
        app_.client_id, app_.secret, scope=SCOPE, redirect_uri=app_.redirect_uri, code_challenge_method="S256"
    )
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(
        f"{base}/auth/authorize", code_verifier=verifier, aud=settings.fhir_base
    )

    browser = requests.Session()
    r = browser.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/login")
    page = browser.get(base + r.headers["Location"], timeout=10)
    csrf = csrf_from(page.text)
    r = browser.post(
        f"{base}/auth/login",
        data={"csrf_token": csrf, "username": username, "password": "violet tulips at dawn"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303, r.text[:300]
    r = browser.get(base + r.headers["Location"], allow_redirects=False, timeout=10)
    assert r.status_code == 302
    callback = r.headers["Location"]
    assert callback.startswith(app_.redirect_uri)

    token = oauth.fetch_token(
        f"{base}/auth/token", authorization_response=callback, code_verifier=verifier, state=state
    )
    assert token["token_type"].lower() == "bearer" and token["patient"] == pid
    assert token["scope"] == SCOPE and token["expires_in"] <= 3600 and token["refresh_token"]

    # The token works on the FHIR API of the same server.
    read = requests.get(
        f"{base}/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    assert read.status_code == 200 and read.json()["id"] == pid

    renewed = oauth.refresh_token(f"{base}/auth/token", refresh_token=token["refresh_token"])
    assert renewed["access_token"] != token["access_token"]
    assert renewed["refresh_token"] != token["refresh_token"] and renewed["patient"] == pid
