"""Authorization code + PKCE, token endpoint, refresh rotation, and scope granting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from smart_auth.hashing import sha256_hex, utcnow
from smart_auth.models import AuthorizationCode, RefreshToken
from smart_auth.tokens import verify_access_token
from tests.auth.support import (
    authorize_params,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    pkce_pair,
    query_of,
    refresh,
)

PATIENT_SCOPE = "launch/patient openid fhirUser patient/Patient.rs patient/Communication.rs"


@pytest.fixture()
def patient(db_session, settings):
    return make_user(db_session, settings, role="patient")


def _signed_in(web, user):
    assert login(web, user.username).status_code == 303
    return web


# --- the authorize request ------------------------------------------------------------------


def test_full_flow_public_client(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    r = exchange(web, client_app, code, verifier)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.access_token_seconds <= 3600
    assert body["scope"] == PATIENT_SCOPE
    assert body["patient"] == patient.fhir_user.split("/")[1]
    assert "refresh_token" not in body  # no offline_access / online_access asked for
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
    claims = verify_access_token(body["access_token"], settings)
    assert claims["sub"] == patient.id and claims["client_id"] == client_app.client_id
    assert claims["fhirUser"] == patient.fhir_user and claims["patient"] == body["patient"]


def test_missing_challenge_is_refused_with_redirect_and_no_code(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, PATIENT_SCOPE, None))
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and "code" not in q and q["state"] == "state-123"


def test_plain_method_is_refused(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    verifier, _ = pkce_pair()
    params = authorize_params(settings, client_app, PATIENT_SCOPE, verifier, code_challenge_method="plain")
    q = query_of(web.get("/auth/authorize", query_string=params).headers["Location"])
    assert q["error"] == "invalid_request" and "code" not in q
    # And without any method (RFC 7636 would default to plain).
    params.pop("code_challenge_method")
    q = query_of(web.get("/auth/authorize", query_string=params).headers["Location"])
    assert q["error"] == "invalid_request" and "code" not in q


def test_wrong_redirect_uri_shows_a_page_and_never_redirects(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    _, challenge = pkce_pair()
    for uri in (client_app.redirect_uri + "/x", client_app.redirect_uri.upper(), "https://evil.example/cb", None):
        params = authorize_params(settings, client_app, PATIENT_SCOPE, challenge, redirect_uri=uri)
        r = web.get("/auth/authorize", query_string=params)
        assert r.status_code == 400 and "Location" not in r.headers, uri
        assert b"<main" in r.data


def test_unknown_client_shows_a_page(web, settings) -> None:
    r = web.get(
        "/auth/authorize",
        query_string={
            "response_type": "code",
            "client_id": "no-such-app",
            "redirect_uri": "https://x.example/cb",
            "scope": "openid",
            "state": "s",
            "aud": settings.fhir_base,
        },
    )
    assert r.status_code == 400 and "Location" not in r.headers


@pytest.mark.parametrize("aud", ["https://other.example/fhir", None, "{base}/", "{base}/Patient"])
def test_wrong_aud_gets_no_code(web, db_session, settings, patient, aud) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    _, challenge = pkce_pair()
    value = aud.format(base=settings.fhir_base) if aud else None
    params = authorize_params(settings, client_app, PATIENT_SCOPE, challenge, aud=value)
    assert ("aud" in params) == (value is not None)
    r = web.get("/auth/authorize", query_string=params)
    assert r.status_code == 400 and "Location" not in r.headers
    assert b"aud" in r.data


def test_state_is_required(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    _, challenge = pkce_pair()
    params = authorize_params(settings, client_app, PATIENT_SCOPE, challenge)
    params.pop("state")
    r = web.get("/auth/authorize", query_string=params)
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and "code" not in q


def test_authorize_by_post(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    verifier, challenge = pkce_pair()
    r = web.post("/auth/authorize", data=authorize_params(settings, client_app, PATIENT_SCOPE, challenge))
    q = query_of(r.headers["Location"])
    assert "code" in q and q["state"] == "state-123"
    assert exchange(web, client_app, q["code"], verifier).status_code == 200


def test_malformed_scope_is_invalid_scope(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    _signed_in(web, patient)
    _, challenge = pkce_pair()
    for scope in ("patient/Patient.dus", "patient/Patient", "patient/Communication.rs?status=x", ""):
        r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, scope, challenge))
        q = query_of(r.headers["Location"])
        assert q["error"] == "invalid_scope" and "code" not in q, scope


def test_v1_scopes_are_echoed(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    scope = "launch/patient patient/*.read"
    code, verifier = get_code(web, settings, client_app, patient.username, scope)
    body = exchange(web, client_app, code, verifier).json
    assert body["scope"] == scope


def test_scopes_are_narrowed_by_client_and_role(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, scope="launch/patient patient/*.rs user/*.rs")
    wanted = "launch/patient patient/Communication.cruds user/Patient.rs system/*.rs launch"
    code, verifier = get_code(web, settings, client_app, patient.username, wanted)
    body = exchange(web, client_app, code, verifier).json
    # cruds cut to rs by the client; user/ scopes dropped for a patient; unknown ones dropped.
    assert body["scope"] == "launch/patient patient/Communication.rs"


def test_nothing_grantable_is_invalid_scope(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, scope="user/*.rs")
    _signed_in(web, patient)
    _, challenge = pkce_pair()
    r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, "user/Patient.rs", challenge))
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_scope" and "code" not in q


# --- the token request ----------------------------------------------------------------------


def test_wrong_verifier_missing_verifier_and_plain_verifier(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    verifier, challenge = pkce_pair()
    code, _ = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE, (verifier, challenge))
    other, _ = pkce_pair()
    for bad in (other, None, "", challenge):
        r = exchange(web, client_app, code, bad)
        assert r.status_code in (400, 401) and "access_token" not in r.json, bad
        assert r.json["error"] in ("invalid_grant", "invalid_request")
    # Failed attempts did not burn the code for its rightful owner.
    assert exchange(web, client_app, code, verifier).status_code == 200


def test_code_is_single_use_and_replay_revokes_refresh_tokens(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE + " offline_access")
    first = exchange(web, client_app, code, verifier)
    assert first.status_code == 200 and "refresh_token" in first.json
    again = exchange(web, client_app, code, verifier)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    r = refresh(web, client_app, first.json["refresh_token"])
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"


def test_code_expires_after_60_seconds(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    row = db_session.get(AuthorizationCode, sha256_hex(code))
    assert row is not None and code not in (row.code_hash, row.redirect_uri)
    assert (row.expires_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)) <= timedelta(seconds=60)
    db_session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hash == sha256_hex(code))
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()
    r = exchange(web, client_app, code, verifier)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"


def test_token_redirect_uri_must_match(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    r = exchange(web, client_app, code, verifier, redirect_uri=client_app.redirect_uri + "x")
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"


def test_code_of_another_client_is_refused(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    thief = make_client(db_session, redirect_uri=client_app.redirect_uri)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    r = exchange(web, thief, code, verifier)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    assert exchange(web, client_app, code, verifier).status_code == 200


def test_random_code_is_exactly_400(web, db_session) -> None:
    client_app = make_client(db_session)
    verifier, _ = pkce_pair()
    r = exchange(web, client_app, "not-a-real-code", verifier)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"


def test_confidential_client_basic_and_post_and_wrong_secret(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    assert exchange(web, client_app, code, verifier, basic=True).status_code == 200
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE, logged_in=True)
    assert exchange(web, client_app, code, verifier, basic=False).status_code == 200
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE, logged_in=True)
    client_app.secret, real = "wrong-secret", client_app.secret
    r = exchange(web, client_app, code, verifier)
    assert r.status_code == 401 and r.json["error"] == "invalid_client"
    # Without any secret a confidential client cannot pose as a public one.
    client_app.secret = None
    r = exchange(web, client_app, code, verifier)
    assert r.status_code in (400, 401) and r.json["error"] == "invalid_client"
    client_app.secret = real
    assert exchange(web, client_app, code, verifier).status_code == 200


def test_client_secret_is_stored_hashed(db_session) -> None:
    from smart_auth.models import OAuthClient

    client_app = make_client(db_session, confidential=True)
    row = db_session.get(OAuthClient, client_app.client_id)
    assert row.client_secret_hash == sha256_hex(client_app.secret) and client_app.secret not in row.client_secret_hash


# --- refresh ----------------------------------------------------------------------------------


def test_refresh_rotation_narrowing_and_reuse_detection(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, confidential=True)
    scope = PATIENT_SCOPE + " offline_access"
    code, verifier = get_code(web, settings, client_app, patient.username, scope)
    first = exchange(web, client_app, code, verifier).json
    rt1 = first["refresh_token"]
    row = db_session.get(RefreshToken, sha256_hex(rt1))
    assert row is not None and row.token_hash != rt1 and not row.revoked
    db_session.rollback()

    second = refresh(web, client_app, rt1)
    assert second.status_code == 200, second.json
    body = second.json
    assert body["scope"] == scope and body["patient"] == first["patient"]
    assert body["refresh_token"] != rt1 and body["access_token"] != first["access_token"]
    assert second.headers["Cache-Control"] == "no-store" and second.headers["Pragma"] == "no-cache"
    claims = verify_access_token(body["access_token"], settings)
    assert claims["patient"] == first["patient"]

    # Narrowing: a subset of scopes gives a token with exactly that scope.
    third = refresh(web, client_app, body["refresh_token"], scope="patient/Patient.r")
    assert third.status_code == 200 and third.json["scope"] == "patient/Patient.r"
    assert verify_access_token(third.json["access_token"], settings)["scope"] == "patient/Patient.r"
    # The rotated token keeps the original grant.
    fourth = refresh(web, client_app, third.json["refresh_token"])
    assert fourth.status_code == 200 and fourth.json["scope"] == scope

    # Superset: refused, and the token is not burnt by the refusal.
    wider = refresh(web, client_app, fourth.json["refresh_token"], scope=scope + " patient/Communication.c")
    assert wider.status_code == 400 and wider.json["error"] == "invalid_scope"
    bad = refresh(web, client_app, fourth.json["refresh_token"], scope="patient/Patient.zz")
    assert bad.status_code == 400 and bad.json["error"] == "invalid_scope"
    fifth = refresh(web, client_app, fourth.json["refresh_token"])
    assert fifth.status_code == 200

    # Replaying an old (rotated) token revokes the whole family.
    replay = refresh(web, client_app, rt1)
    assert replay.status_code == 400 and replay.json["error"] == "invalid_grant"
    assert refresh(web, client_app, fifth.json["refresh_token"]).status_code == 400


def test_refresh_by_another_client_or_random_token_is_refused(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    other = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE + " online_access")
    rt = exchange(web, client_app, code, verifier).json["refresh_token"]
    assert refresh(web, other, rt).json["error"] == "invalid_grant"
    assert refresh(web, client_app, "made-up-token").status_code == 400
    assert refresh(web, client_app, rt).status_code == 200  # the other client's try did not burn it


def test_expired_refresh_token_is_refused(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE + " offline_access")
    rt = exchange(web, client_app, code, verifier).json["refresh_token"]
    row = db_session.get(RefreshToken, sha256_hex(rt))
    assert row.expires_at.replace(tzinfo=None) > (utcnow() + timedelta(days=89)).replace(tzinfo=None)
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == sha256_hex(rt))
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()
    assert refresh(web, client_app, rt).status_code == 400


def test_client_without_refresh_grant_gets_no_refresh_token(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session, grant_types=("authorization_code",))
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE + " offline_access")
    assert "refresh_token" not in exchange(web, client_app, code, verifier).json


def test_token_issue_is_audited(web, db_session, settings, patient) -> None:
    from fhirserver.models import AuditLogRow

    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE)
    token = exchange(web, client_app, code, verifier).json["access_token"]
    db_session.expire_all()
    events = db_session.execute(select(AuditLogRow.content)).scalars()
    mine = [e for e in events if client_app.client_id.encode() in e]
    assert any(b'"code":"token-issue"' in e and patient.id.encode() in e for e in mine)
    assert not any(token[-40:].encode() in e or patient.username.encode() in e for e in mine)


# --- OpenID Connect and online access -------------------------------------------------------------


def test_id_token_for_openid_fhiruser(web, db_session, settings, patient) -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    client_app = make_client(db_session)
    verifier, challenge = pkce_pair()
    params = authorize_params(
        settings,
        client_app,
        "openid fhirUser launch/patient patient/Patient.rs offline_access",
        challenge,
        nonce="n-0S6_WzA2Mj",
    )
    web.get("/auth/authorize", query_string=params)
    r = web.get(login(web, patient.username).headers["Location"])
    code = query_of(r.headers["Location"])["code"]
    body = exchange(web, client_app, code, verifier).json
    keys = KeySet.import_key_set(web.get("/auth/jwks").json)
    token = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    claims = token.claims
    assert token.header["kid"] == keys.keys[0].kid
    assert claims["iss"] == settings.base_url + "/auth" and claims["aud"] == client_app.client_id
    assert claims["sub"] == patient.id and 0 < len(claims["sub"]) < 256
    assert claims["nonce"] == "n-0S6_WzA2Mj" and claims["exp"] > claims["iat"]
    assert claims["fhirUser"] == f"{settings.fhir_base}/{patient.fhir_user}"
    renewed = refresh(web, client_app, body["refresh_token"]).json
    again = jwt.decode(renewed["id_token"], keys, algorithms=["RS256"]).claims
    assert again["sub"] == patient.id and "nonce" not in again
    narrowed = refresh(web, client_app, renewed["refresh_token"], scope="patient/Patient.rs").json
    assert "id_token" not in narrowed


def test_no_id_token_without_openid_and_long_nonce_refused(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    code, verifier = get_code(web, settings, client_app, patient.username, PATIENT_SCOPE.replace("openid ", ""))
    assert "id_token" not in exchange(web, client_app, code, verifier).json
    _, challenge = pkce_pair()
    r = web.get(
        "/auth/authorize",
        query_string=authorize_params(settings, client_app, PATIENT_SCOPE, challenge, nonce="n" * 300),
    )
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and "code" not in q


def test_logout_ends_online_access_but_not_offline_access(web, db_session, settings, patient) -> None:
    from tests.auth.support import csrf_from

    online_app, offline_app = make_client(db_session), make_client(db_session)
    code, verifier = get_code(web, settings, online_app, patient.username, PATIENT_SCOPE + " online_access")
    online = exchange(web, online_app, code, verifier).json["refresh_token"]
    code, verifier = get_code(
        web, settings, offline_app, patient.username, PATIENT_SCOPE + " offline_access", logged_in=True
    )
    offline = exchange(web, offline_app, code, verifier).json["refresh_token"]
    page = web.get("/auth/logout")
    web.post("/auth/logout", data={"csrf_token": csrf_from(page.data)})
    assert refresh(web, online_app, online).status_code == 400
    assert refresh(web, offline_app, offline).status_code == 200
