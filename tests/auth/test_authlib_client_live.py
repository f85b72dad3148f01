"""Authlib's ``OAuth2Session`` as an independent SMART client of the live server (B1, B4, B8-B10).

A public browser-style client (no secret, PKCE S256 its only proof): authorize, sign in
(played with ``requests``, redirects followed by hand), exchange the code, refresh with
rotation, then a resource server introspects the token (RFC 7662) and the app revokes
it (RFC 7009): the next FHIR read is 401 and introspection says inactive.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from smart_auth import accounts, clients
from tests.auth.support import PASSWORD, csrf_from, make_client
from tests.factories import patient_json, practitioner_json
from tests.support import uid

SCOPE = "launch/patient openid fhirUser patient/Patient.rs offline_access"


def _patient(db_session: Any, settings: Any) -> tuple[str, str]:
    repo = Repository(db_session, settings, system_principal("tests"))
    doc = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}")).res_id
    pid = repo.create("Patient", patient_json([f"Practitioner/{doc}"], family=f"Authlib{uid()}")).res_id
    username = f"authlib{uid()}"
    accounts.create_user(
        db_session, username=username, password=PASSWORD, role="patient", settings=settings, fhir_user=f"Patient/{pid}"
    )
    db_session.commit()
    return username, pid


def _sign_in(base: str, url: str, username: str) -> str:
    """The user's browser: authorize, the login form, back to authorize; the callback URL."""
    browser = requests.Session()
    r = browser.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/login"), r.text[:300]
    page = browser.get(base + r.headers["Location"], timeout=10)
    r = browser.post(
        f"{base}/auth/login",
        data={"csrf_token": csrf_from(page.text), "username": username, "password": PASSWORD},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303, r.text[:300]
    r = browser.get(base + r.headers["Location"], allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text[:300]
    return r.headers["Location"]


def _read(base: str, pid: str, access_token: str) -> requests.Response:
    return requests.get(f"{base}/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def test_B1_B8_B9_B10_authlib_session_pkce_refresh_introspect_revoke(
    live_server: Any, db_session: Any, settings: Any
) -> None:
    username, pid = _patient(db_session, settings)
    app = make_client(db_session, first_party=True)  # public: no secret
    rs_id, rs_secret = f"rs-{uid()}", secrets.token_urlsafe(24)
    clients.register_client(
        db_session,
        client_id=rs_id,
        name="Resource server",
        redirect_uris=["https://rs.example/unused"],
        scope="openid",
        secret=rs_secret,
        resource_server=True,
    )
    db_session.commit()
    base = live_server.url
    token_url, revoke_url, introspect_url = (f"{base}/auth/token", f"{base}/auth/revoke", f"{base}/auth/introspect")

    oauth = OAuth2Session(
        app.client_id,
        None,
        scope=SCOPE,
        redirect_uri=app.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(
        f"{base}/auth/authorize", code_verifier=verifier, aud=settings.fhir_base
    )
    sent = parse_qs(urlsplit(url).query)
    assert sent["code_challenge_method"] == ["S256"] and sent["code_challenge"][0] != verifier
    callback = _sign_in(base, url, username)
    assert callback.startswith(app.redirect_uri)

    # The code and the verifier (B1).
    token = oauth.fetch_token(token_url, authorization_response=callback, code_verifier=verifier, state=state)
    assert token["token_type"].lower() == "bearer" and token["patient"] == pid
    assert token["scope"] == SCOPE and 0 < token["expires_in"] <= 3600 and token["refresh_token"]
    assert _read(base, pid, token["access_token"]).status_code == 200

    # Refresh rotates the refresh token.
    renewed = oauth.refresh_token(token_url, refresh_token=token["refresh_token"])
    assert renewed["access_token"] != token["access_token"]
    assert renewed["refresh_token"] and renewed["refresh_token"] != token["refresh_token"]
    assert renewed["patient"] == pid and renewed["scope"] == SCOPE
    assert _read(base, pid, renewed["access_token"]).status_code == 200

    # A resource server introspects the app's access token.
    rs = OAuth2Session(rs_id, rs_secret)
    info = rs.introspect_token(introspect_url, token=renewed["access_token"], token_type_hint="access_token").json()
    assert info["active"] is True and info["client_id"] == app.client_id
    assert set(info["scope"].split()) == set(SCOPE.split()) and info["patient"] == pid and info["sub"]

    # The app signs out: revoking the refresh token ends the grant, access token included.
    revoked = oauth.revoke_token(revoke_url, token=renewed["refresh_token"], token_type_hint="refresh_token")
    assert revoked.status_code == 200
    read = _read(base, pid, renewed["access_token"])
    assert read.status_code == 401 and read.headers["WWW-Authenticate"].startswith("Bearer")
    gone = rs.introspect_token(introspect_url, token=renewed["access_token"], token_type_hint="access_token").json()
    assert gone == {"active": False}
    try:
        oauth.refresh_token(token_url, refresh_token=renewed["refresh_token"])
    except OAuthError as exc:
        assert exc.error == "invalid_grant"
    else:
        raise AssertionError("a revoked refresh token still refreshed")


def test_B4_authlib_session_wrong_verifier_is_invalid_grant(live_server: Any, db_session: Any, settings: Any) -> None:
    username, _ = _patient(db_session, settings)
    app = make_client(db_session, first_party=True)
    base = live_server.url
    oauth = OAuth2Session(
        app.client_id,
        None,
        scope=SCOPE,
        redirect_uri=app.redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(
        f"{base}/auth/authorize", code_verifier=verifier, aud=settings.fhir_base
    )
    callback = _sign_in(base, url, username)
    try:
        oauth.fetch_token(
            f"{base}/auth/token", authorization_response=callback, code_verifier=generate_token(64), state=state
        )
    except OAuthError as exc:
        assert exc.error == "invalid_grant"
    else:
        raise AssertionError("the code was exchanged with another verifier")
