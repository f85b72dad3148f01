"""The SMART client pieces that need no server: PKCE, the authorize URL, claims for display."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

from portal_app import oauth


def test_s256_matches_rfc7636_appendix_b() -> None:
    assert oauth.s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_new_pkce_is_fresh_and_long_enough() -> None:
    v1, c1 = oauth.new_pkce()
    v2, _ = oauth.new_pkce()
    assert v1 != v2
    assert 43 <= len(v1) <= 128
    assert c1 == oauth.s256(v1) and "=" not in c1


def test_authorize_url_carries_every_smart_parameter() -> None:
    url = oauth.authorize_url(
        "http://h/auth/authorize",
        client_id="portal",
        redirect_uri="http://h/portal/callback",
        scope="openid fhirUser",
        state="st",
        aud="http://h/fhir",
        code_challenge="ch",
    )
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q == {
        "response_type": "code",
        "client_id": "portal",
        "redirect_uri": "http://h/portal/callback",
        "scope": "openid fhirUser",
        "state": "st",
        "aud": "http://h/fhir",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


def _jwt(claims: dict) -> str:
    def enc(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'RS256'})}.{enc(claims)}.sig"


def test_decode_claims_reads_the_payload_and_tolerates_garbage() -> None:
    assert oauth.decode_claims(_jwt({"role": "patient", "fhirUser": "Patient/1"})) == {
        "role": "patient",
        "fhirUser": "Patient/1",
    }
    assert oauth.decode_claims("not-a-jwt") == {}
    assert oauth.decode_claims("a.!!!.c") == {}


def test_tokens_round_trip_and_expiry() -> None:
    t = oauth.Tokens("at", expires_at=1000.0, scope="s", refresh_token="rt", patient="p1")
    assert oauth.Tokens.from_session(t.to_session()) == t
    assert t.expired(now=980.0) and not t.expired(now=900.0)


def test_backchannel_rewrites_only_the_public_origin() -> None:
    d = oauth.Discovery("https://portal.example", "http://10.0.0.5:8080")
    assert d.backchannel("https://portal.example/auth/token") == "http://10.0.0.5:8080/auth/token"
    assert d.backchannel("https://elsewhere.example/auth/token") == "https://elsewhere.example/auth/token"
    same = oauth.Discovery("http://h", "http://h")
    assert same.backchannel("http://h/auth/token") == "http://h/auth/token"
