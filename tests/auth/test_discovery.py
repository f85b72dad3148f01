"""SMART discovery document and the JWKS endpoint."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"])
@pytest.mark.parametrize("accept", [None, "application/json", "text/html", "application/fhir+json"])
def test_smart_configuration(client, settings, path, accept) -> None:
    headers = {"Accept": accept} if accept else {}
    r = client.get(path, headers=headers)
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    doc = r.json
    base = settings.base_url
    assert doc["authorization_endpoint"] == f"{base}/auth/authorize"
    assert doc["token_endpoint"] == f"{base}/auth/token"
    assert doc["jwks_uri"] == f"{base}/auth/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"client_secret_basic", "client_secret_post"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert doc["issuer"] == f"{base}/auth"  # with sso-openid-connect (A3)
    caps = set(doc["capabilities"])
    assert {
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "context-standalone-patient",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "authorize-post",
        "sso-openid-connect",
    } <= caps
    # Nothing we cannot do.
    assert not caps & {"context-ehr-encounter"}  # we serve no Encounter
    assert {"launch-ehr", "context-ehr-patient", "context-banner", "context-style"} <= caps  # A5, A10, A14
    assert {"launch", "launch/patient"} <= set(doc["scopes_supported"])
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        assert doc[key].startswith(("http://", "https://"))


def test_jwks_endpoint(client) -> None:
    r = client.get("/auth/jwks")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    (key,) = r.json["keys"]
    assert key["kty"] == "RSA" and "d" not in key and key["kid"]


def test_openid_configuration(client, settings) -> None:
    r = client.get("/auth/.well-known/openid-configuration")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.json
    smart = client.get("/.well-known/smart-configuration").json
    assert doc["issuer"] == smart["issuer"] == settings.base_url + "/auth"
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        assert doc[key] == smart[key]
    assert doc["response_types_supported"] == ["code"]
    assert doc["subject_types_supported"] == ["public"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
