"""One "Log out" ends everything, server-side, with no intermediate page (over HTTP, both databases).

The defect: logout sent the browser to the authorization server's "Sign out on this
device?" page; a user who stopped there and pressed "Sign in" was back in without a
password. Now the portal revokes each realm's grant (RFC 7009), ends the sign-in at the
authorization server (back-channel end-session with the id_token), clears its own
session and shows /portal/signed-out at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from portal_app.app import create_portal_app
from portal_app.config import PortalConfig
from tests.portal.portal_sessions import cookie_of, portal_store, realm_tokens
from tests.portal.test_portal_app import ROOT, get, post
from tests.portal.test_portal_app import jwt as fake_jwt
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import csrf, login
from tests.portal.test_portal_live import practice as practice

FACES = {
    # face: (home page, the Settings attribute of its client secret, its client id)
    "patient": ("/portal/", "portal_client_secret", "portal"),
    "console": ("/portal/console/", "console_client_secret", "console"),
}


def record_urls(s: requests.Session) -> list[str]:
    """Every URL the session is answered from, redirects included (what a browser would show)."""
    urls: list[str] = []
    s.hooks["response"].append(lambda resp, *args, **kwargs: urls.append(resp.url))
    return urls


def log_out(s: requests.Session, base: str, home: str) -> requests.Response:
    """Press "Log out" on the home page of a face; the 303 (not followed)."""
    page = s.get(base + home, timeout=30)
    assert page.status_code == 200, page.url
    return s.post(
        base + ("/portal/console/logout" if "console" in home else "/portal/logout"),
        data={"csrf_token": csrf(page.text)},
        timeout=30,
        allow_redirects=False,
    )


@pytest.mark.parametrize("face", sorted(FACES))
def test_logout_ends_the_sign_in_everywhere_without_a_confirmation_page(
    live_server: Any, practice: Any, settings: Any, clients_seeded: None, face: str
) -> None:
    base = live_server.url
    home, secret_attr, client_id = FACES[face]
    username = practice.provider_username if face == "console" else practice.patient_username
    s = login(base, face, username, practice.password)
    urls = record_urls(s)
    store = portal_store(settings)
    sid = cookie_of(s.cookies)
    tokens = realm_tokens(store, sid, face)
    api = requests.get(
        base + f"/fhir/Patient/{practice.patient_id}",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=30,
    )
    assert api.status_code == 200  # the token worked before the logout

    out = log_out(s, base, home)
    # (d) straight to the portal's own signed-out page: no "sign out?" page to stop at.
    assert out.status_code == 303
    assert out.headers["Location"] == "/portal/signed-out"
    done = s.get(urljoin(base, out.headers["Location"]), timeout=30)
    assert done.status_code == 200 and "You are signed out" in done.text
    assert store.load(sid) is None, "the portal's own session must be gone"

    # (a) signing in again asks for the password: the login form, not a redirect back with a code.
    again = s.get(base + ("/portal/console/" if face == "console" else "/portal/login"), timeout=30)
    assert again.url.startswith(base + "/auth/login"), again.url
    assert 'name="password"' in again.text
    assert not any("/callback" in u for u in urls if u.startswith(base + "/portal/"))
    # (d) at no point did the browser see the authorization server's logout page.
    assert not any("/auth/logout" in u for u in urls), urls

    # (b) the old refresh token is dead at the token endpoint.
    refreshed = requests.post(
        base + "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, getattr(settings, secret_attr)),
        timeout=30,
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant", refreshed.status_code
    # (c) and the old access token is refused by the API.
    api = requests.get(
        base + f"/fhir/Patient/{practice.patient_id}",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=30,
    )
    assert api.status_code == 401


def test_signing_in_again_after_logout_works_with_the_password(
    live_server: Any, practice: Any, clients_seeded: None
) -> None:
    """Coming back after a logout and giving the password signs in as before (nothing is stuck)."""
    base = live_server.url
    s = login(base, "patient", practice.patient_username, practice.password)
    assert log_out(s, base, "/portal/").status_code == 303
    page = s.get(base + "/portal/login", timeout=30)
    assert page.url.startswith(base + "/auth/login")
    resp = s.post(
        base + "/auth/login",
        data={"csrf_token": csrf(page.text), "username": practice.patient_username, "password": practice.password},
        timeout=30,
    )
    assert resp.status_code == 200 and resp.url == base + "/portal/", resp.url


def _portal_against(back_channel: str, settings: Any, tmp_path: Any, **secrets: str) -> Any:
    """A portal app whose back channel (discovery, tokens) is ``back_channel``, with these client secrets."""
    config = PortalConfig(
        base_url="http://portal.test",
        internal_base_url=back_channel,
        secret_key="logout-test",
        patient_client_secret=secrets.get("patient", settings.portal_client_secret),
        console_client_secret=secrets.get("console", settings.console_client_secret),
        session_url=f"filesystem://{tmp_path / 'sessions'}",
    )
    app = create_portal_app(config)
    app.config["TESTING"] = True
    return app


def _sign_in_with(web: Any, realm: str, access: str, refresh: str, id_token: str) -> None:
    with web.session_transaction(base_url=ROOT) as sess:
        sess["realms"] = {
            realm: {
                "access_token": access,
                "expires_at": time.time() + 600,
                "scope": "openid",
                "refresh_token": refresh,
                "patient": "p1",
                "id_token": id_token,
            }
        }


@pytest.mark.parametrize("unreachable", [False, True])
def test_a_failed_revocation_or_end_session_still_signs_out_and_logs_no_token(
    live_server: Any, settings: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture, unreachable: bool
) -> None:
    """Best effort: the authorization server refuses (wrong client secret) or cannot be reached;
    the portal session is cleared all the same and the failure is logged without any token."""
    if unreachable:
        app = _portal_against("http://127.0.0.1:9", settings, tmp_path)  # nothing listens there
    else:
        app = _portal_against(live_server.url, settings, tmp_path, patient="wrong-secret")
    web = app.test_client()
    access = fake_jwt({"role": "patient", "patient": "p1", "fhirUser": "Patient/p1", "jti": "AT-sentinel-41"})
    _sign_in_with(web, "patient", access, "RT-sentinel-42", "ID-sentinel-43")
    page = get(web, "/signed-out")
    assert page.status_code == 200
    token = csrf(page.get_data(as_text=True))
    with caplog.at_level(logging.INFO, logger="portal_app"):
        resp = post(web, "/logout", data={"csrf_token": token})
    assert resp.status_code == 303 and resp.headers["Location"] == "/portal/signed-out"
    with web.session_transaction(base_url=ROOT) as sess:
        assert not sess.get("realms")
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("portal_app")]
    assert warnings, "a failed revocation or end-session must be logged"
    text = "\n".join(warnings)
    expected = "cannot be reached" if unreachable else "revoking the grant failed"
    assert expected in text, text
    if not unreachable:
        assert "ending the authorization server sign-in failed" in text
    for secret in (access, "RT-sentinel-42", "ID-sentinel-43", "wrong-secret"):
        assert secret not in caplog.text
