"""Independent backend-service clients against the real HTTP server (checklist D2, D3).

Authlib's ``PrivateKeyJWT`` signs the client assertions (a fresh one per token request,
or its jti would repeat), and the client's JWKS is published by a local HTTP server
(pytest-httpserver), so the server fetches it over HTTP exactly as it would a real
client's. SMART's Python client (fhirclient) is driven through its backend flow too: it
takes a pre-signed assertion (``jwt_token``) and finds the token endpoint in /metadata.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jws

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from tests.auth.backend_support import jwks_of, make_backend, rsa_key
from tests.factories import patient_json, practitioner_json
from tests.support import uid


def _patient(db_session: Any, settings: Any) -> str:
    repo = Repository(db_session, settings, system_principal("tests"))
    doc = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}")).res_id
    pid = repo.create("Patient", patient_json([f"Practitioner/{doc}"], family=f"Live{uid()}")).res_id
    db_session.commit()
    return pid


def test_D2_authlib_private_key_jwt_against_the_live_server(
    live_server: Any, httpserver: Any, db_session: Any, settings: Any
) -> None:
    key = rsa_key(3)
    path = f"/lab-{uid()}/jwks.json"
    httpserver.expect_request(path).respond_with_json(jwks_of(key), headers={"Cache-Control": "max-age=300"})
    backend = make_backend(db_session, key=key, scope="system/Patient.rs", jwks_url=httpserver.url_for(path))
    pid = _patient(db_session, settings)
    token_url = f"{live_server.url}/auth/token"
    pem = key.as_pem(private=True).decode()

    def fetch() -> dict[str, Any]:
        # Fresh per call: Authlib stores the jti it makes in ``claims``. Its assertions live an
        # hour by default, which SMART refuses (at most five minutes): hence the exp claim.
        auth = PrivateKeyJWT(
            token_url, alg="RS384", headers={"kid": backend.kid}, claims={"exp": int(time.time()) + 300}
        )
        oauth = OAuth2Session(backend.client_id, pem, token_endpoint_auth_method=auth, scope="system/Patient.rs")
        return dict(oauth.fetch_token(token_url, grant_type="client_credentials"))

    token = fetch()
    assert token["token_type"].lower() == "bearer" and token["scope"] == "system/Patient.rs"
    assert token["expires_in"] <= 300 and "refresh_token" not in token
    read = requests.get(
        f"{live_server.url}/fhir/Patient/{pid}",
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=10,
    )
    assert read.status_code == 200 and read.json()["id"] == pid
    # A second client (fresh assertion) within max-age: the JWKS is not fetched again.
    assert fetch()["access_token"] != token["access_token"]
    assert len([r for r, _ in httpserver.log if r.path == path]) == 1


def test_D2_fhirclient_backend_flow_with_a_presigned_assertion(
    live_server: Any, db_session: Any, settings: Any
) -> None:
    from fhirclient import client as smart_client
    from fhirclient.models.patient import Patient

    backend = make_backend(db_session, scope="system/Patient.rs")
    pid = _patient(db_session, settings)
    claims = {
        "iss": backend.client_id,
        "sub": backend.client_id,
        "aud": f"{live_server.url}/auth/token",
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    signed = jws.serialize_compact(
        {"alg": "RS384", "kid": backend.kid, "typ": "JWT"},
        json.dumps(claims).encode(),
        backend.key,
        algorithms=["RS384"],
    )
    smart = smart_client.FHIRClient(
        settings={
            "app_id": backend.client_id,
            "api_base": settings.fhir_base,
            "scope": "system/Patient.rs",
            "jwt_token": signed,
        }
    )
    smart.wants_patient = False  # else it adds launch/patient, which no backend may hold
    smart.prepare()
    smart.authorize()
    assert smart.server.auth.access_token
    patient = Patient.read(pid, smart.server)
    assert patient.id == pid
