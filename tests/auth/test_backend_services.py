"""SMART Backend Services: client_credentials with private_key_jwt (checklist D1-D5, B11, F9).

Every refusal of a client assertion is a 401 ``invalid_client`` with an
``error_description``; each D3 bullet has a test of its own, with an assertion that is
valid in every other respect (so the test fails if that one check is missing). The
tokens are then used on /fhir, where a system principal does exactly what its scopes
name.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import time_machine

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.models import AuditLogRow
from smart_auth import backend_services, client_jwks, clients
from smart_auth.clients import ClientError
from smart_auth.models import AssertionJti
from tests.auth.backend_support import (
    ASSERTION_TYPE,
    Backend,
    assertion,
    ec_key,
    jwks_of,
    make_backend,
    public_jwk,
    request_token,
    rsa_key,
    system_token,
    token_url,
    unsigned_assertion,
)
from tests.factories import make_practice, message_json, patient_json, practitioner_json
from tests.support import uid

FHIR = "application/fhir+json"


def assert_invalid_client(resp: Any, phrase: str) -> None:
    assert resp.status_code == 401, (resp.status_code, resp.data[:300])
    body = resp.get_json()
    assert body["error"] == "invalid_client", body
    assert phrase.lower() in body["error_description"].lower(), body
    assert "access_token" not in body


@pytest.fixture()
def backend(db_session: Any) -> Backend:
    return make_backend(db_session, scope="system/Patient.rs system/Practitioner.rs")


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


# ---------------------------------------------------------------- D1 discovery


def test_D1_discovery_lists_backend_services(client: Any) -> None:
    doc = client.get("/.well-known/smart-configuration").get_json()
    assert "client_credentials" in doc["grant_types_supported"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert "client-confidential-asymmetric" in doc["capabilities"]
    assert "private_key_jwt" in doc["revocation_endpoint_auth_methods_supported"]


# ---------------------------------------------------------------- D2 Inferno's checks


def test_D2_valid_request_gets_a_bearer_token(client: Any, settings: Any, backend: Backend) -> None:
    resp = request_token(client, assertion(settings, backend), "system/Patient.rs")
    assert resp.status_code == 200, resp.data[:300]
    body = resp.get_json()
    assert body["token_type"].lower() == "bearer" and body["access_token"]
    assert isinstance(body["expires_in"], int) and body["scope"] == "system/Patient.rs"
    assert resp.headers["Cache-Control"] == "no-store"


def test_D2_unknown_grant_type_is_exactly_400(client: Any, settings: Any, backend: Backend) -> None:
    resp = request_token(client, assertion(settings, backend), grant_type="not_a_grant_type")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "unsupported_grant_type"


def test_D2_bad_client_assertion_type_is_refused(client: Any, settings: Any, backend: Backend) -> None:
    resp = request_token(client, assertion(settings, backend), client_assertion_type="not_an_assertion_type")
    assert resp.status_code in (400, 401)
    body = resp.get_json()
    assert body["error"] == "invalid_client" and body["error_description"]
    missing = client.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/Patient.rs"})
    assert missing.status_code in (400, 401) and missing.get_json()["error"] == "invalid_client"


# ---------------------------------------------------------------- D3 each must be 401 invalid_client


def test_D3_bad_signature_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    forged = assertion(settings, backend, key=rsa_key(1))  # same kid, another key
    assert_invalid_client(request_token(client, forged), "signature")


def test_D3_unknown_kid_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    signed = assertion(settings, backend, key=rsa_key(1), header={"kid": rsa_key(1).thumbprint()})
    assert_invalid_client(request_token(client, signed), "kid")


def test_D3_missing_kid_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    assert_invalid_client(request_token(client, assertion(settings, backend, header={"kid": None})), "kid")


def test_D3_kty_alg_mismatch_is_invalid_client(client: Any, settings: Any, db_session: Any) -> None:
    # The client's JWKS has an RSA key under the kid; the assertion claims ES384 for it.
    rsa = make_backend(db_session, key=rsa_key(2))
    signed = assertion(settings, rsa, key=ec_key(1), header={"alg": "ES384"})
    assert_invalid_client(request_token(client, signed), "does not fit")
    # ... and an EC key that is not P-384 does not fit ES384 either.
    p256 = ec_key_p256()
    ec = make_backend(db_session, key=p256, alg="ES384")
    signed = assertion(settings, ec, key=ec_key(1))
    assert_invalid_client(request_token(client, signed), "does not fit")


def ec_key_p256() -> Any:
    from joserfc.jwk import ECKey

    return ECKey.generate_key("P-256")


def test_D3_alg_none_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    signed = unsigned_assertion(settings, backend, {"alg": "none", "kid": backend.kid, "typ": "JWT"}, None)
    assert_invalid_client(request_token(client, signed), "RS384 or ES384")


def test_D3_hs256_signed_with_the_public_key_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    for secret in (
        backend.key.as_pem(private=False),
        json.dumps(public_jwk(backend.key)).encode(),
    ):
        signed = unsigned_assertion(settings, backend, {"alg": "HS256", "kid": backend.kid, "typ": "JWT"}, secret)
        assert_invalid_client(request_token(client, signed), "RS384 or ES384")


@pytest.mark.parametrize(
    ("offset", "phrase"),
    [(None, "needs an 'exp'"), (-60, "expired"), (-1, "expired"), (360, "five minutes"), (3600, "five minutes")],
)
def test_D3_exp_missing_past_or_too_far_ahead_is_invalid_client(
    client: Any, settings: Any, backend: Backend, offset: int | None, phrase: str
) -> None:
    signed = assertion(settings, backend, exp=None if offset is None else int(time.time()) + offset)
    assert_invalid_client(request_token(client, signed), phrase)


def test_D3_exp_within_five_minutes_is_accepted(client: Any, settings: Any, backend: Backend) -> None:
    signed = assertion(settings, backend, exp=int(time.time()) + 300)
    assert request_token(client, signed).status_code == 200


def test_D3_exp_that_is_not_a_number_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    assert_invalid_client(request_token(client, assertion(settings, backend, exp="soon")), "not a number")


@pytest.mark.parametrize(
    "aud", ["http://127.0.0.1:1/auth/token", "FHIR", ["x", "y"], None], ids=["other-url", "fhir", "list", "missing"]
)
def test_D3_aud_not_the_token_url_is_invalid_client(client: Any, settings: Any, backend: Backend, aud: Any) -> None:
    if aud == "FHIR":
        aud = settings.fhir_base
    assert_invalid_client(request_token(client, assertion(settings, backend, aud=aud)), "aud")


def test_D3_aud_as_a_one_element_list_is_accepted(client: Any, settings: Any, backend: Backend) -> None:
    assert request_token(client, assertion(settings, backend, aud=[token_url(settings)])).status_code == 200


def test_D3_iss_not_sub_is_invalid_client(client: Any, settings: Any, backend: Backend, db_session: Any) -> None:
    other = make_backend(db_session)
    assert_invalid_client(request_token(client, assertion(settings, backend, iss=other.client_id)), "iss")


def test_D3_unknown_client_is_invalid_client(client: Any, settings: Any) -> None:
    ghost = Backend(f"ghost-{uid()}", rsa_key(), "RS384", "system/*.rs")
    assert_invalid_client(request_token(client, assertion(settings, ghost)), "unknown")


def test_D3_an_app_client_cannot_use_an_assertion(client: Any, settings: Any, db_session: Any) -> None:
    """A client that is not a backend service is 'unknown' to this method (F9: only what it needs)."""
    from tests.auth.support import make_client

    app_ = make_client(db_session, confidential=True)
    impostor = Backend(app_.client_id, rsa_key(), "RS384", "system/*.rs")
    assert_invalid_client(request_token(client, assertion(settings, impostor)), "unknown")


def test_D3_replayed_jti_is_invalid_client(client: Any, settings: Any, backend: Backend, db_session: Any) -> None:
    jti = f"jti-{uid()}"
    signed = assertion(settings, backend, jti=jti)
    assert request_token(client, signed).status_code == 200
    assert_invalid_client(request_token(client, signed), "jti")
    # The same jti in a freshly signed assertion is a replay too.
    assert_invalid_client(request_token(client, assertion(settings, backend, jti=jti)), "jti")
    db_session.rollback()
    rows = db_session.query(AssertionJti).filter_by(client_id=backend.client_id).all()
    assert len(rows) == 1 and rows[0].jti_hash != jti  # stored hashed


def test_D3_missing_jti_is_invalid_client(client: Any, settings: Any, backend: Backend) -> None:
    assert_invalid_client(request_token(client, assertion(settings, backend, jti=None)), "jti")


def test_D3_jti_is_kept_until_the_assertion_expires(client: Any, settings: Any, backend: Backend) -> None:
    """After the assertion's exp the row may go; before it, a replay is refused."""
    signed = assertion(settings, backend, exp=int(time.time()) + 120)
    assert request_token(client, signed).status_code == 200
    with time_machine.travel(time.time() + 100, tick=False):
        assert_invalid_client(request_token(client, signed), "jti")
    with time_machine.travel(time.time() + 121, tick=False):
        assert_invalid_client(request_token(client, signed), "expired")


def test_D3_jku_other_than_the_registered_url_is_invalid_client(
    client: Any, settings: Any, db_session: Any, httpserver: Any
) -> None:
    path = f"/jwks-{uid()}"
    httpserver.expect_request(path).respond_with_json(jwks_of(rsa_key()), headers={"Cache-Control": "max-age=60"})
    evil = f"/evil-{uid()}"
    httpserver.expect_request(evil).respond_with_json(jwks_of(rsa_key(1)))
    by_url = make_backend(db_session, jwks_url=httpserver.url_for(path))
    signed = assertion(settings, by_url, key=rsa_key(1), header={"jku": httpserver.url_for(evil)})
    assert_invalid_client(request_token(client, signed), "jku")
    assert not [r for r, _ in httpserver.log if r.path == evil]  # never fetched
    # The registered URL as jku is fine.
    ok = assertion(settings, by_url, header={"jku": httpserver.url_for(path)})
    assert request_token(client, ok).status_code == 200
    # A client with an inline JWKS has no URL, so any jku is refused.
    inline = make_backend(db_session)
    signed = assertion(settings, inline, header={"jku": httpserver.url_for(path)})
    assert_invalid_client(request_token(client, signed), "jku")


def test_D3_inline_jwks_with_rs384_and_es384(client: Any, settings: Any, db_session: Any) -> None:
    for backend in (make_backend(db_session, alg="RS384"), make_backend(db_session, alg="ES384")):
        resp = request_token(client, assertion(settings, backend), "system/Patient.rs")
        assert resp.status_code == 200, (backend.alg, resp.data[:300])


def test_D3_jwks_url_is_cached_for_its_max_age(client: Any, settings: Any, db_session: Any, httpserver: Any) -> None:
    path = f"/jwks-{uid()}"
    httpserver.expect_request(path).respond_with_json(jwks_of(ec_key()), headers={"Cache-Control": "max-age=60"})
    backend = make_backend(db_session, alg="ES384", jwks_url=httpserver.url_for(path))

    def fetches() -> int:
        return len([r for r, _ in httpserver.log if r.path == path])

    assert request_token(client, assertion(settings, backend)).status_code == 200
    assert request_token(client, assertion(settings, backend)).status_code == 200
    assert fetches() == 1  # the second request within max-age did not fetch
    with time_machine.travel(time.time() + 61, tick=False):
        assert request_token(client, assertion(settings, backend)).status_code == 200
        assert fetches() == 2  # expired: fetched again


def test_D3_jwks_url_with_no_store_is_fetched_every_time(
    client: Any, settings: Any, db_session: Any, httpserver: Any
) -> None:
    path = f"/jwks-{uid()}"
    httpserver.expect_request(path).respond_with_json(jwks_of(rsa_key()), headers={"Cache-Control": "no-store"})
    backend = make_backend(db_session, jwks_url=httpserver.url_for(path))
    for _ in range(2):
        assert request_token(client, assertion(settings, backend)).status_code == 200
    assert len([r for r, _ in httpserver.log if r.path == path]) == 2


def test_D3_unreachable_or_bad_jwks_url_is_invalid_client(
    client: Any, settings: Any, db_session: Any, httpserver: Any
) -> None:
    path = f"/jwks-{uid()}"
    httpserver.expect_request(path).respond_with_data("not json", status=200)
    backend = make_backend(db_session, jwks_url=httpserver.url_for(path))
    assert_invalid_client(request_token(client, assertion(settings, backend)), "keys are unavailable")
    gone = make_backend(db_session, jwks_url=httpserver.url_for(f"/missing-{uid()}"))
    assert_invalid_client(request_token(client, assertion(settings, gone)), "keys are unavailable")
    big = f"/big-{uid()}"
    httpserver.expect_request(big).respond_with_data(b" " * (client_jwks.MAX_BYTES + 10))
    huge = make_backend(db_session, jwks_url=httpserver.url_for(big))
    assert_invalid_client(request_token(client, assertion(settings, huge)), "too large")


def test_D5_cache_control_max_age_parsing() -> None:
    assert client_jwks.max_age("public, max-age=120") == 120
    assert client_jwks.max_age('max-age="30"') == 30
    assert client_jwks.max_age("no-store") == 0 and client_jwks.max_age("no-cache, max-age=60") == 0
    assert client_jwks.max_age(None) == client_jwks.DEFAULT_MAX_AGE
    assert client_jwks.max_age("max-age=99999999") == client_jwks.MAX_MAX_AGE
    assert client_jwks.max_age("s-maxage=5") == client_jwks.DEFAULT_MAX_AGE


def test_D5_malformed_assertions_are_invalid_client_never_500(client: Any, settings: Any, backend: Backend) -> None:
    for junk in ("x", "a.b.c", "a.b", "\u00e9.\u00e9.\u00e9", "e30.e30.", "W10.W10.", "x" * 20000):
        assert_invalid_client(request_token(client, junk), "")
    assert_invalid_client(request_token(client, assertion(settings, backend, sub=None)), "sub")
    assert_invalid_client(request_token(client, assertion(settings, backend, sub=5, iss=5)), "sub")


# ---------------------------------------------------------------- D4 scopes and tokens


def test_D4_only_system_scopes(client: Any, settings: Any, backend: Backend) -> None:
    for scope in ("patient/Patient.rs", "user/Patient.rs", "openid", "system/Patient.rs launch/patient"):
        resp = request_token(client, assertion(settings, backend), scope)
        assert resp.status_code == 400, scope
        body = resp.get_json()
        assert body["error"] == "invalid_scope" and body["error_description"], body
    resp = request_token(client, assertion(settings, backend), None)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_scope"


def test_D4_scopes_are_narrowed_to_the_registration(client: Any, settings: Any, backend: Backend) -> None:
    resp = request_token(client, assertion(settings, backend), "system/Patient.cruds system/Communication.rs")
    assert resp.status_code == 200
    assert resp.get_json()["scope"] == "system/Patient.rs"
    resp = request_token(client, assertion(settings, backend), "system/*.rs")
    assert resp.get_json()["scope"] == "system/Patient.rs system/Practitioner.rs"


def test_D4_nothing_inside_the_registration_is_invalid_scope(client: Any, settings: Any, backend: Backend) -> None:
    resp = request_token(client, assertion(settings, backend), "system/Communication.rs")
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == "invalid_scope" and "registered" in body["error_description"]


def test_D4_no_refresh_token_and_expires_in_at_most_300(client: Any, settings: Any, backend: Backend) -> None:
    body = request_token(client, assertion(settings, backend), "system/Patient.rs").get_json()
    assert "refresh_token" not in body and "id_token" not in body
    assert 0 < body["expires_in"] <= 300


def test_B11_backend_tokens_live_300_seconds_not_authlibs_ten_days(
    client: Any, settings: Any, backend: Backend
) -> None:
    body = request_token(client, assertion(settings, backend), "system/Patient.rs").get_json()
    from smart_auth.tokens import verify_access_token

    claims = verify_access_token(body["access_token"], settings)
    assert claims["exp"] - claims["iat"] == body["expires_in"] == backend_services.SYSTEM_TOKEN_SECONDS == 300
    assert backend_services.token_lifetime(settings, 3600) == 300
    assert claims["role"] == "system" and claims["sub"] == claims["client_id"] == backend.client_id
    assert "fhirUser" not in claims and claims["aud"] == settings.fhir_base
    assert {"iss", "scope", "jti", "gid"} <= claims.keys()


def test_D4_token_issue_is_audited(client: Any, settings: Any, backend: Backend, db_session: Any) -> None:
    assert request_token(client, assertion(settings, backend)).status_code == 200
    db_session.rollback()
    rows = db_session.query(AuditLogRow).all()
    assert any(b"token-issue" in r.content and backend.client_id.encode() in r.content for r in rows)


def test_F9_app_clients_cannot_use_client_credentials(client: Any, settings: Any, db_session: Any) -> None:
    from tests.auth.support import basic_auth, make_client

    app_ = make_client(db_session, confidential=True)
    resp = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
        headers=basic_auth(app_),
    )
    assert resp.status_code in (400, 401) and resp.get_json()["error"] in ("invalid_client", "unauthorized_client")
    with pytest.raises(ClientError):
        clients.register_client(
            db_session,
            client_id=f"app-{uid()}",
            name="x",
            redirect_uris=["https://x.example/cb"],
            scope="user/*.rs",
            grant_types=("client_credentials",),
        )


# ---------------------------------------------------------------- registration rules


def test_D3_a_jwks_with_a_private_or_symmetric_key_is_refused(db_session: Any) -> None:
    private = {**rsa_key().as_dict(private=True), "kid": "k1"}
    for jwks in (
        {"keys": [private]},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k2"}]},
        {"keys": [{k: v for k, v in public_jwk(rsa_key()).items() if k != "kid"}]},
        {"keys": []},
        {"keys": [public_jwk(rsa_key()), public_jwk(rsa_key())]},  # duplicate kid
        "not json",
    ):
        with pytest.raises(ClientError):
            clients.register_backend_client(
                db_session, client_id=f"b-{uid()}", name="x", scope="system/*.rs", jwks=jwks
            )
    for bad in (
        {"scope": "user/*.rs", "jwks": jwks_of(rsa_key())},
        {"scope": "system/*.rs", "jwks_url": "http://jwks.example/keys"},  # http off loopback
        {"scope": "system/*.rs"},
        {"scope": "system/*.rs", "jwks": jwks_of(rsa_key()), "jwks_url": "https://jwks.example/keys"},
    ):
        with pytest.raises(ClientError):
            clients.register_backend_client(db_session, client_id=f"b-{uid()}", name="x", **bad)
    db_session.rollback()


def test_F9_backend_clients_get_only_client_credentials(db_session: Any) -> None:
    backend = make_backend(db_session)
    row = clients.get_client(db_session, backend.client_id)
    assert row is not None
    assert clients.grant_types(row) == ["client_credentials"] and clients.redirect_uris(row) == []
    assert row.client_secret_hash is None and row.token_endpoint_auth_method == "private_key_jwt"
    assert clients.is_backend(row) and not clients.is_public(row)


# ---------------------------------------------------------------- the grant on /fhir


def test_D4_revoked_system_grant_is_refused_on_fhir(
    client: Any, settings: Any, backend: Backend, db_session: Any
) -> None:
    token = system_token(client, settings, backend, "system/Patient.rs")
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 200
    # A resource server sees it live (RFC 7662) ...
    rs_id, rs_secret = f"rs-{uid()}", "resource-server-secret-" + uid()
    clients.register_client(
        db_session,
        client_id=rs_id,
        name="RS",
        redirect_uris=["https://rs.example/cb"],
        scope="user/*.rs",
        secret=rs_secret,
        resource_server=True,
    )
    db_session.commit()
    info = client.post("/auth/introspect", data={"token": token}, auth=(rs_id, rs_secret)).get_json()
    assert info["active"] is True and info["client_id"] == backend.client_id and info["scope"] == "system/Patient.rs"
    # ... the client revokes it (RFC 7009) with a fresh assertion ...
    resp = client.post(
        "/auth/revoke",
        data={
            "token": token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(settings, backend),
        },
    )
    assert resp.status_code == 200, resp.data[:300]
    # ... and the next request is refused, as is introspection.
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 401
    assert client.post("/auth/introspect", data={"token": token}, auth=(rs_id, rs_secret)).get_json() == {
        "active": False
    }


def test_D4_system_token_ends_when_the_client_is_no_longer_a_backend(
    client: Any, settings: Any, backend: Backend, db_session: Any
) -> None:
    token = system_token(client, settings, backend, "system/Patient.rs")
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 200
    clients.register_client(
        db_session,
        client_id=backend.client_id,
        name="now an app",
        redirect_uris=["https://x.example/cb"],
        scope="user/*.rs",
    )
    db_session.commit()
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 401


def test_D4_a_revoked_grant_row_is_refused(client: Any, settings: Any, backend: Backend, db_session: Any) -> None:
    from smart_auth import grants
    from smart_auth.tokens import verify_access_token

    token = system_token(client, settings, backend, "system/Patient.rs")
    gid = verify_access_token(token, settings)["gid"]
    grant = grants.get(db_session, gid)
    assert grant is not None and grant.client_id == grant.user_id == backend.client_id
    grants.revoke(db_session, gid, "revoked")
    db_session.commit()
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 401


# ---------------------------------------------------------------- what a system principal may do


def test_D4_system_principal_does_what_its_scopes_name(
    client: Any, settings: Any, backend: Backend, db_session: Any
) -> None:
    practice = make_practice(db_session, settings)
    token = system_token(client, settings, backend, "system/Patient.rs")
    h = bearer(token, **{"Content-Type": FHIR})
    # Reads every Patient (no compartment for the system), and searches them.
    assert client.get(f"/fhir/Patient/{practice.patient_id}", headers=h).status_code == 200
    found = client.get(f"/fhir/Patient?_id={practice.patient_id}", headers=h).get_json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [practice.patient_id]
    # ... but writes nothing, and nothing of another type.
    assert client.post("/fhir/Patient", json=patient_json([]), headers=h).status_code == 403
    assert client.put(f"/fhir/Patient/ext-{uid()}", json={}, headers=h).status_code in (400, 403)
    current = client.get(f"/fhir/Patient/{practice.patient_id}", headers=h).get_json()
    assert client.put(f"/fhir/Patient/{practice.patient_id}", json=current, headers=h).status_code == 403
    assert client.delete(f"/fhir/Patient/{practice.patient_id}", headers=h).status_code == 403
    assert client.get("/fhir/Communication?_count=1", headers=h).status_code == 403
    assert client.get("/fhir/AuditEvent?_count=1", headers=h).status_code == 403


def test_D4_system_cruds_loads_patients_and_messages(client: Any, settings: Any, db_session: Any) -> None:
    practice = make_practice(db_session, settings)
    loader = make_backend(db_session, scope="system/Patient.cruds system/Communication.cruds system/Practitioner.rs")
    token = system_token(client, settings, loader, "system/Patient.cruds system/Communication.cruds")
    h = bearer(token, **{"Content-Type": FHIR})
    # A Patient without a generalPractitioner (e.g. not yet assigned), and one with.
    bare = client.post("/fhir/Patient", json=patient_json([], family=f"NoGp{uid()}"), headers=h)
    assert bare.status_code == 201, bare.data[:300]
    assigned = client.post(
        "/fhir/Patient", json=patient_json([practice.practitioner_ref], family=f"Gp{uid()}"), headers=h
    )
    assert assigned.status_code == 201, assigned.data[:300]
    # Update-as-create with a client-assigned id (the other system's key), then an update.
    ext = f"ext-{uid()}"
    body = {**patient_json([practice.practitioner_ref], family=f"Ext{uid()}"), "id": ext}
    created = client.put(f"/fhir/Patient/{ext}", json=body, headers=h)
    assert created.status_code == 201 and created.get_json()["id"] == ext
    again = client.put(f"/fhir/Patient/{ext}", json={**body, "birthDate": "1981-01-01"}, headers=h)
    assert again.status_code == 200 and again.get_json()["meta"]["versionId"] == "2"
    # A Communication written by the system (e.g. a lab interface's message to a patient).
    msg = message_json(practice.practitioner_ref, practice.patient_ref, practice.patient_ref, topic="Lab")
    sent = client.post("/fhir/Communication", json=msg, headers=h)
    assert sent.status_code == 201, sent.data[:300]
    # The patient's provider sees the new patient: it is in their care.
    from tests.factories import token_for

    doc = token_for(client.application, settings, practice.provider_user_id, "user/Patient.rs")
    assert client.get(f"/fhir/Patient/{ext}", headers=bearer(doc)).status_code == 200


def test_D4_users_never_update_as_create(client: Any, settings: Any, db_session: Any) -> None:
    from tests.factories import token_for

    practice = make_practice(db_session, settings)
    doc = token_for(client.application, settings, practice.provider_user_id, "user/Patient.cruds")
    ext = f"ext-{uid()}"
    body = {**patient_json([practice.practitioner_ref]), "id": ext}
    resp = client.put(f"/fhir/Patient/{ext}", json=body, headers=bearer(doc, **{"Content-Type": FHIR}))
    assert resp.status_code == 404
    cap = client.get("/fhir/metadata").get_json()
    patient = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    assert patient["updateCreate"] is True  # for system principals (documented in capability.py)


def test_D4_the_servers_own_system_principal_keeps_full_access(db_session: Any, settings: Any) -> None:
    repo = Repository(db_session, settings, system_principal("tests"))
    assert repo.create("Practitioner", practitioner_json(family=f"Sys{uid()}")).res_id
    db_session.rollback()


def test_D5_replay_table_refuses_a_second_insert(db_session: Any) -> None:
    from smart_auth import assertion_replay
    from smart_auth.hashing import utcnow

    exp = int(time.time()) + 60
    client_id = f"c-{uid()}"
    assert assertion_replay.remember(db_session, client_id, "j1", exp, utcnow())
    assert not assertion_replay.remember(db_session, client_id, "j1", exp, utcnow())
    assert assertion_replay.remember(db_session, f"other-{uid()}", "j1", exp, utcnow())
    db_session.rollback()


# ---------------------------------------------------------------- the command line


def invoke(env: dict[str, str], *args: str) -> Any:
    from click.testing import CliRunner

    from fhirserver.cli import main

    return CliRunner().invoke(main, list(args), env=env)


def test_D_cli_client_add_backend_with_a_jwks_file_or_url(cli_env: Any, db_session: Any, tmp_path: Any) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks_of(rsa_key())))
    by_file = f"cli-backend-{uid()}"
    result = invoke(
        cli_env, "client", "add", "--id", by_file, "--name", "Lab", "--backend",
        "--jwks-file", str(jwks_file), "--scope", "system/Patient.cruds",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    by_url = f"cli-backend-{uid()}"
    result = invoke(
        cli_env, "client", "add", "--id", by_url, "--name", "Lab", "--backend",
        "--jwks-url", "https://lab.example/.well-known/jwks.json", "--scope", "system/*.rs",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    db_session.rollback()
    a, b = clients.get_client(db_session, by_file), clients.get_client(db_session, by_url)
    assert a is not None and b is not None and clients.is_backend(a) and clients.is_backend(b)
    assert json.loads(a.jwks or "{}") == jwks_of(rsa_key()) and a.jwks_url is None
    assert b.jwks_url == "https://lab.example/.well-known/jwks.json" and b.jwks is None
    assert "secret" not in result.output.lower()


def test_D_cli_client_add_backend_refuses_what_it_must(cli_env: Any, tmp_path: Any) -> None:
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [{**rsa_key().as_dict(private=True), "kid": "k"}]}))
    public = tmp_path / "public.json"
    public.write_text(json.dumps(jwks_of(rsa_key())))
    cases = [
        (["--jwks-file", str(private), "--scope", "system/*.rs"], "private"),
        (["--jwks-file", str(public), "--scope", "user/*.rs"], "system/"),
        (["--jwks-url", "http://lab.example/jwks", "--scope", "system/*.rs"], "https"),
        (["--scope", "system/*.rs"], "exactly one"),
        (["--jwks-file", str(public), "--jwks-url", "https://x.example/j", "--scope", "system/*.rs"], "exactly one"),
    ]
    for extra, phrase in cases:
        result = invoke(cli_env, "client", "add", "--id", f"cli-bad-{uid()}", "--name", "Lab", "--backend", *extra)
        assert result.exit_code != 0 and phrase in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    # An app still needs a redirect URI.
    result = invoke(cli_env, "client", "add", "--id", f"cli-app-{uid()}", "--name", "App", "--scope", "user/*.rs")
    assert result.exit_code != 0 and "redirect" in result.output.lower()


def test_D_cli_token_client_prints_an_audited_system_token(
    cli_env: Any, client: Any, settings: Any, db_session: Any
) -> None:
    backend = make_backend(db_session, scope="system/Patient.cruds")
    result = invoke(cli_env, "token", "--client", backend.client_id, "--scope", "system/Patient.rs")
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    from smart_auth.tokens import verify_access_token

    claims = verify_access_token(token, settings)
    assert claims["role"] == "system" and claims["sub"] == backend.client_id
    assert claims["exp"] - claims["iat"] <= 300
    assert client.get("/fhir/Patient?_count=1", headers=bearer(token)).status_code == 200
    db_session.rollback()
    rows = db_session.query(AuditLogRow).all()
    assert any(b'"cli-token"' in r.content and backend.client_id.encode() in r.content for r in rows)
    db_session.rollback()  # SQLite: end the read before the command writes
    # Only within the registration, only system/ scopes, only backend clients.
    for args, phrase in (
        (["--client", backend.client_id, "--scope", "system/Communication.rs"], "registered scope"),
        (["--client", backend.client_id, "--scope", "user/Patient.rs"], "registered scope"),
        (["--client", backend.client_id], "--scope"),
        (["--client", f"nobody-{uid()}", "--scope", "system/Patient.rs"], "no such backend client"),
        (["--client", backend.client_id, "--user", "someone", "--scope", "system/Patient.rs"], "exactly one"),
    ):
        result = invoke(cli_env, "token", *args)
        assert result.exit_code != 0 and phrase in result.output, (args, result.output)


def test_D_seed_registers_the_demo_backend_with_a_key_under_var(cli_env: Any, db_session: Any) -> None:
    from pathlib import Path

    from fhirserver.seed import demo_backend_jwks

    key_file = Path(cli_env["VAR_DIR"]) / "demo-backend-key.pem"
    jwks = demo_backend_jwks(key_file)
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert demo_backend_jwks(key_file) == jwks  # made once, then reused
    assert "d" not in jwks["keys"][0] and jwks["keys"][0]["kid"]
    from fhirserver.seed import SeedReport, load_fixture, seed_backend_clients

    report = SeedReport()
    seed_backend_clients(db_session, load_fixture(), report, key_dir=key_file.parent)
    db_session.commit()
    row = clients.get_client(db_session, "demo-backend")
    assert row is not None and clients.is_backend(row) and json.loads(row.jwks or "{}") == jwks
    again = SeedReport()
    seed_backend_clients(db_session, load_fixture(), again, key_dir=key_file.parent)
    assert again.existing == ["client demo-backend"] and not again.created
