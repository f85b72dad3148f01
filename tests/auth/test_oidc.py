"""OpenID Connect for ``openid fhirUser`` (A13): provider metadata, JWKS, the id_token, fhirUser.

Decision (docs/security.md): the fhirUser resource is readable with the app's token when
the token's scopes cover its type (a patient's ``patient/Patient.rs`` names their own
record; ``user/Practitioner.rs`` the directory). ``openid fhirUser`` alone says who signed
in, and reads nothing: scopes are what the user consented to, so none is implied.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.auth.support import authorize_params, exchange, login, make_client, new_web_client, pkce_pair, query_of
from tests.support import uid

FHIR_USER_RE = re.compile(r"^https?://[^/]+(/[^?#]*)?/(Patient|Practitioner)/[A-Za-z0-9\-.]{1,64}$")


def _sign_in(app: Any, settings: Any, db_session: Any, username: str, scope: str) -> tuple[Any, dict[str, Any]]:
    """Authorize (first-party client: no consent page), sign in, exchange: (client app, token response)."""
    client = make_client(db_session, first_party=True)
    web = new_web_client(app)
    verifier, challenge = pkce_pair()
    nonce = f"n-{uid()}"
    r = web.get("/auth/authorize", query_string=authorize_params(settings, client, scope, challenge, nonce=nonce))
    assert r.status_code in (302, 303) and r.headers["Location"].endswith("/auth/login")
    r = login(web, username)
    assert r.status_code == 303, r.data[:300]
    r = web.get(r.headers["Location"])
    q = query_of(r.headers["Location"])
    assert "code" in q, q
    body = exchange(web, client, q["code"], verifier).json
    assert body["id_token"], body
    body["_nonce"] = nonce
    return client, body


def _verified_id_token(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify the id_token as a relying party would: discovery, then the JWKS, then the claims."""
    web = client
    smart = web.get("/.well-known/smart-configuration").json
    oidc = web.get(urlsplit(smart["issuer"]).path + "/.well-known/openid-configuration").json
    jwks = web.get(urlsplit(oidc["jwks_uri"]).path).json
    token = jwt.decode(body["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])
    return token.header, token.claims


def test_A13_openid_configuration_at_the_issuer(client: Any, settings: Any) -> None:
    issuer = client.get("/.well-known/smart-configuration").json["issuer"]
    assert issuer == f"{settings.base_url}/auth"
    r = client.get(urlsplit(issuer).path + "/.well-known/openid-configuration")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.json
    assert doc["issuer"] == issuer
    base = settings.base_url
    assert doc["authorization_endpoint"] == f"{base}/auth/authorize"
    assert doc["token_endpoint"] == f"{base}/auth/token"
    assert doc["jwks_uri"] == f"{base}/auth/jwks"
    assert "code" in doc["response_types_supported"]
    assert doc["subject_types_supported"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "none" not in doc["id_token_signing_alg_values_supported"]


def test_A13_jwks_holds_public_rsa_keys_with_kids(client: Any) -> None:
    keys = client.get("/auth/jwks").json["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "RSA" and key["kid"] and key["n"] and key["e"]
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public halves only
    assert len({k["kid"] for k in keys}) == len(keys)


def test_A13_patient_id_token_and_fhir_user(app: Any, settings: Any, db_session: Any, practice: Any) -> None:
    scope = "launch/patient openid fhirUser patient/Patient.rs"
    registered, body = _sign_in(app, settings, db_session, practice.patient_username, scope)
    web = new_web_client(app)
    header, claims = _verified_id_token(web, body)
    assert header["alg"] == "RS256"
    assert header["kid"] in {k["kid"] for k in web.get("/auth/jwks").json["keys"]}
    assert claims["aud"] == registered.client_id
    assert claims["iss"] == f"{settings.base_url}/auth"
    now = time.time()
    assert claims["exp"] > now and claims["iat"] <= now + 5
    assert isinstance(claims["sub"], str) and claims["sub"].strip() and len(claims["sub"]) < 256
    assert claims["nonce"] == body["_nonce"]
    assert claims["fhirUser"] == f"{settings.fhir_base}/Patient/{practice.patient_id}"
    assert FHIR_USER_RE.match(claims["fhirUser"])
    # The app reads the fhirUser resource with its own token.
    read = web.get(urlsplit(claims["fhirUser"]).path, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200 and read.get_json(force=True)["id"] == practice.patient_id


def test_A13_practitioner_fhir_user_is_readable(app: Any, settings: Any, db_session: Any, practice: Any) -> None:
    _, body = _sign_in(app, settings, db_session, practice.provider_username, "openid fhirUser user/Practitioner.rs")
    web = new_web_client(app)
    _, claims = _verified_id_token(web, body)
    assert claims["fhirUser"] == f"{settings.fhir_base}/Practitioner/{practice.practitioner_id}"
    assert FHIR_USER_RE.match(claims["fhirUser"])
    read = web.get(urlsplit(claims["fhirUser"]).path, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200 and read.get_json(force=True)["resourceType"] == "Practitioner"


def test_A13_identity_scopes_alone_read_nothing(app: Any, settings: Any, db_session: Any, practice: Any) -> None:
    _, body = _sign_in(app, settings, db_session, practice.patient_username, "openid fhirUser")
    web = new_web_client(app)
    _, claims = _verified_id_token(web, body)
    assert claims["fhirUser"].endswith(f"/Patient/{practice.patient_id}")
    read = web.get(urlsplit(claims["fhirUser"]).path, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 403


def test_A13_id_token_names_fhir_user_only_when_that_scope_is_granted(
    app: Any, settings: Any, db_session: Any, practice: Any
) -> None:
    """``openid`` without ``fhirUser`` says who signed in (``sub``) but not their FHIR identity."""
    _, body = _sign_in(app, settings, db_session, practice.patient_username, "launch/patient openid patient/Patient.rs")
    _, claims = _verified_id_token(new_web_client(app), body)
    assert claims["sub"] and "fhirUser" not in claims
