"""The token lifecycle: grants checked on every request, revocation (RFC 7009), introspection
(RFC 7662), and what ends a grant (code replay, logout, password reset, disabling).

Each test drives the real authorization server and then the real FHIR API with the token,
because "revoked" means "the API refuses it on the very next request".
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import time_machine

from smart_auth import accounts
from smart_auth.models import OAuthGrant
from tests.auth.support import (
    RegisteredApp,
    basic_auth,
    csrf_from,
    exchange,
    get_code,
    make_client,
    make_user,
    new_web_client,
    refresh,
)
from tests.factories import make_patient

PATIENT_SCOPE = "launch/patient openid fhirUser patient/Patient.rs patient/Communication.rs"


@pytest.fixture()
def patient(db_session: Any, settings: Any) -> Any:
    """A patient user whose Patient record really exists (the API reads it)."""
    gp = make_user(db_session, settings, role="provider").fhir_user
    pid = make_patient(db_session, settings, gp)
    return make_user(db_session, settings, role="patient", fhir_user=f"Patient/{pid}")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _read_self(web: Any, user: Any, token: str) -> int:
    return int(web.get(f"/fhir/{user.fhir_user}", headers=_bearer(token)).status_code)


def _tokens(
    web: Any, settings: Any, app: RegisteredApp, user: Any, extra: str = " offline_access", logged_in: bool = False
) -> dict[str, Any]:
    code, verifier = get_code(web, settings, app, user.username, PATIENT_SCOPE + extra, logged_in=logged_in)
    r = exchange(web, app, code, verifier)
    assert r.status_code == 200, r.json
    return dict(r.json)


def _revoke(web: Any, app: RegisteredApp, token: str, hint: str | None = None, **over: Any) -> Any:
    data = {"token": token, **({"token_type_hint": hint} if hint else {})}
    headers = {}
    if app.secret:
        headers = basic_auth(app)
    else:
        data["client_id"] = app.client_id
    data.update(over)
    return web.post("/auth/revoke", data=data, headers=headers)


def _introspect(web: Any, caller: RegisteredApp, token: str) -> Any:
    return web.post("/auth/introspect", data={"token": token}, headers=basic_auth(caller))


# -- B6: a replayed code ---------------------------------------------------------------------------


def test_B6_a_replayed_code_ends_the_first_redemption_access_token_too(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE + " offline_access")
    first = exchange(web, client_app, code, verifier).json
    assert _read_self(web, patient, first["access_token"]) == 200
    again = exchange(web, client_app, code, verifier)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    assert _read_self(web, patient, first["access_token"]) == 401  # the skeleton kept this one working
    assert refresh(web, client_app, first["refresh_token"]).status_code == 400


# -- B10: revocation -------------------------------------------------------------------------------


def test_B10_revoking_a_refresh_token_ends_its_access_tokens_at_once(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, client_app, patient)
    rotated = refresh(web, client_app, tokens["refresh_token"]).json
    assert _read_self(web, patient, tokens["access_token"]) == 200
    assert _read_self(web, patient, rotated["access_token"]) == 200
    r = _revoke(web, client_app, rotated["refresh_token"], "refresh_token")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    for access in (tokens["access_token"], rotated["access_token"]):  # the whole grant ended
        resp = web.get(f"/fhir/{patient.fhir_user}", headers=_bearer(access))
        assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert refresh(web, client_app, rotated["refresh_token"]).status_code == 400


def test_B10_revoking_an_access_token_ends_its_grant(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)  # a public client revokes with its client_id
    tokens = _tokens(web, settings, client_app, patient)
    assert _revoke(web, client_app, tokens["access_token"]).status_code == 200
    assert _read_self(web, patient, tokens["access_token"]) == 401
    assert refresh(web, client_app, tokens["refresh_token"]).status_code == 400


def test_B10_unknown_tokens_and_other_clients_tokens_get_an_empty_200(web, db_session, settings, patient) -> None:
    mine, other = make_client(db_session, confidential=True), make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, mine, patient)
    for junk in ("not-a-token", "a.b.c", "x" * 5000):
        r = _revoke(web, mine, junk)
        assert r.status_code == 200 and r.get_data() in (b"", b"{}")
    r = _revoke(web, other, tokens["refresh_token"])
    assert r.status_code == 200
    assert _read_self(web, patient, tokens["access_token"]) == 200  # another client cannot revoke it


def test_B10_the_client_must_authenticate(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, client_app, patient)
    bad = "Basic " + base64.b64encode(f"{client_app.client_id}:wrong".encode()).decode()
    r = web.post("/auth/revoke", data={"token": tokens["refresh_token"]}, headers={"Authorization": bad})
    assert r.status_code == 401 and r.json["error"] == "invalid_client"
    r = web.post("/auth/revoke", data={"token": tokens["refresh_token"]})
    assert r.status_code in (400, 401)
    assert _read_self(web, patient, tokens["access_token"]) == 200
    missing = web.post("/auth/revoke", data={"token_type_hint": "refresh_token"}, headers=basic_auth(client_app))
    assert missing.status_code == 400 and missing.json["error"] == "invalid_request"


def test_B10_revocation_is_seen_at_once_by_another_app_instance(settings, db_session, patient) -> None:
    """Nothing is cached: a second instance (its own process state) refuses the revoked token."""
    from tests.auth.support import build_app

    one, two = build_app(settings).test_client(), build_app(settings).test_client()
    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(one, settings, client_app, patient)
    assert _read_self(two, patient, tokens["access_token"]) == 200  # cached as verified on "two"
    assert _revoke(one, client_app, tokens["refresh_token"]).status_code == 200
    assert _read_self(two, patient, tokens["access_token"]) == 401


def test_B10_revocation_is_audited_without_the_token(app, web, db_session, settings, patient) -> None:
    from sqlalchemy import select

    from fhirserver.models import AuditLogRow

    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, client_app, patient)
    _revoke(web, client_app, tokens["refresh_token"])
    db_session.expire_all()
    rows = db_session.execute(select(AuditLogRow.content)).scalars()
    revokes = [r.decode() for r in rows if b'"token-revoke"' in r]
    assert revokes and all(tokens["refresh_token"] not in r and tokens["access_token"][-32:] not in r for r in revokes)
    db_session.rollback()


# -- B9: introspection -----------------------------------------------------------------------------


def test_B9_introspection_of_a_live_token(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, client_app, patient)
    r = _introspect(web, client_app, tokens["access_token"])
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.json
    assert body["active"] is True and body["scope"] == tokens["scope"] and body["client_id"] == client_app.client_id
    assert body["patient"] == tokens["patient"] and body["sub"] == patient.id
    assert body["iss"] == settings.base_url + "/auth" and body["fhirUser"].endswith(patient.fhir_user)
    assert body["exp"] - body["iat"] == tokens["expires_in"]
    refreshed = _introspect(web, client_app, tokens["refresh_token"]).json
    assert refreshed["active"] is True and refreshed["token_type"] == "refresh_token"


def test_B9_inactive_tokens_are_exactly_active_false(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, client_app, patient)
    assert _introspect(web, client_app, "garbage").json == {"active": False}
    with time_machine.travel(3600 + 5 + __import__("time").time(), tick=False):
        assert _introspect(web, client_app, tokens["access_token"]).json == {"active": False}
    _revoke(web, client_app, tokens["refresh_token"])
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert _introspect(web, client_app, token).json == {"active": False}


def test_B9_who_may_introspect(web, db_session, settings, patient) -> None:
    owner, stranger = make_client(db_session), make_client(db_session, confidential=True)
    tokens = _tokens(web, settings, owner, patient)
    # Another confidential client sees nothing; a registered resource server sees the token.
    assert _introspect(web, stranger, tokens["access_token"]).json == {"active": False}
    from smart_auth.models import OAuthClient

    db_session.get(OAuthClient, stranger.client_id).resource_server = True
    db_session.commit()
    assert _introspect(web, stranger, tokens["access_token"]).json["active"] is True
    # A public client cannot introspect at all.
    r = web.post("/auth/introspect", data={"token": tokens["access_token"], "client_id": owner.client_id})
    assert r.status_code == 401


# -- what else ends a grant ------------------------------------------------------------------------


def test_logout_ends_online_grants_at_once(web, db_session, settings, patient) -> None:
    online_app, offline_app = make_client(db_session), make_client(db_session)
    online = _tokens(web, settings, online_app, patient, " online_access")
    offline = _tokens(web, settings, offline_app, patient, " offline_access", logged_in=True)
    plain = _tokens(web, settings, online_app, patient, "", logged_in=True)
    web.post("/auth/logout", data={"csrf_token": csrf_from(web.get("/auth/logout").data)})
    assert _read_self(web, patient, online["access_token"]) == 401
    assert _read_self(web, patient, plain["access_token"]) == 401
    assert _read_self(web, patient, offline["access_token"]) == 200  # offline access survives logout


def test_a_disabled_account_is_refused_on_the_next_request(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    tokens = _tokens(web, settings, client_app, patient)
    assert _read_self(web, patient, tokens["access_token"]) == 200
    accounts.set_active(db_session, db_session.get(type(patient), patient.id), False)
    db_session.commit()
    assert _read_self(web, patient, tokens["access_token"]) == 401
    assert refresh(web, client_app, tokens["refresh_token"]).status_code == 400
    reasons = {g.revoke_reason for g in db_session.query(OAuthGrant).filter_by(user_id=patient.id)}
    assert reasons == {"account-disabled"}
    db_session.rollback()


def test_a_role_change_ends_the_old_tokens(web, db_session, settings) -> None:
    staff = make_user(db_session, settings, role="staff", staff_of=("Practitioner/x1",))
    from smart_auth.grants import issue_token

    token = issue_token(db_session, settings, user=staff, client_id="tests", scope="user/Patient.rs")
    db_session.commit()
    assert web.get("/fhir/Patient", headers=_bearer(token)).status_code == 200
    db_session.get(type(staff), staff.id).role = "admin"
    db_session.commit()
    assert web.get("/fhir/Practitioner", headers=_bearer(token)).status_code == 401


def test_a_staff_assignment_change_takes_effect_at_once(web, app, db_session, settings) -> None:
    from tests.factories import make_practice, token_for

    practice = make_practice(db_session, settings)
    staff = make_user(db_session, settings, role="staff")
    token = token_for(app, settings, staff.id, "user/Patient.rs")
    assert web.get(f"/fhir/{practice.patient_ref}", headers=_bearer(token)).status_code == 404
    accounts.assign_staff(db_session, db_session.get(type(staff), staff.id), practice.practitioner_ref)
    db_session.commit()
    assert web.get(f"/fhir/{practice.patient_ref}", headers=_bearer(token)).status_code == 200
    accounts.assign_staff(db_session, db_session.get(type(staff), staff.id), practice.practitioner_ref, remove=True)
    db_session.commit()
    assert web.get(f"/fhir/{practice.patient_ref}", headers=_bearer(token)).status_code == 404


def test_end_session_ends_the_sign_in_of_an_id_token(app, db_session, settings, patient) -> None:
    """The back-channel logout the portal uses: the browser's session is gone, online grants end."""
    client_app = make_client(db_session, confidential=True)
    browser = new_web_client(app)
    tokens = _tokens(browser, settings, client_app, patient, " online_access")
    assert browser.get("/auth/").status_code == 200  # signed in
    server = new_web_client(app)
    wrong = server.post("/auth/end-session", data={"id_token_hint": tokens["id_token"]})
    assert wrong.status_code == 401
    other = make_client(db_session, confidential=True)
    foreign = server.post("/auth/end-session", data={"id_token_hint": tokens["id_token"]}, headers=basic_auth(other))
    assert foreign.status_code == 400  # an id_token issued to another client
    assert browser.get("/auth/").status_code == 200
    ok = server.post("/auth/end-session", data={"id_token_hint": tokens["id_token"]}, headers=basic_auth(client_app))
    assert ok.status_code == 204
    assert browser.get("/auth/").status_code == 302  # the browser must sign in again
    assert _read_self(browser, patient, tokens["access_token"]) == 401
