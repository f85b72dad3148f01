"""Access-token claims, JWKS, and verify_access_token's refusals (times on a frozen clock)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import time_machine
from joserfc import jwt
from joserfc.jwk import RSAKey

from smart_auth.tokens import InvalidToken, issue_access_token, jwks, signing_key, verify_access_token
from tests.auth.support import make_user


@pytest.fixture()
def user(db_session, settings):
    return make_user(db_session, settings, role="provider")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(settings, user, **over):
    now = int(time.time())
    claims = {
        "iss": settings.base_url + "/auth",
        "sub": user.id,
        "aud": settings.fhir_base,
        "client_id": "c",
        "scope": "user/*.rs",
        "exp": now + 300,
        "iat": now,
        "jti": "j1",
        "gid": "g1",
        "role": user.role,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(settings, claims, key=None, alg="RS256", kid=None):
    sk = signing_key(settings)
    header = {"alg": alg, "kid": kid or sk.kid}
    return jwt.encode(header, claims, key or sk.key, algorithms=[alg])


def test_claims_are_exactly_the_contract(settings, user) -> None:
    token = issue_access_token(
        settings, user=user, client_id="app1", scope="user/*.rs  openid", grant_id="g1", patient="p1"
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["kid"] == signing_key(settings).kid
    claims = verify_access_token(token, settings)
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "client_id",
        "scope",
        "exp",
        "iat",
        "jti",
        "gid",
        "role",
        "fhirUser",
        "patient",
    }
    assert claims["gid"] == "g1"
    assert claims["iss"] == settings.base_url + "/auth"
    assert claims["aud"] == settings.fhir_base
    assert claims["sub"] == user.id and claims["role"] == "provider" and claims["fhirUser"] == user.fhir_user
    assert claims["scope"] == "user/*.rs openid" and claims["client_id"] == "app1" and claims["patient"] == "p1"
    assert claims["exp"] - claims["iat"] == settings.access_token_seconds


def test_lifetime_is_capped_at_an_hour(settings, user) -> None:
    token = issue_access_token(
        settings.with_(access_token_seconds=7200),
        user=user,
        client_id="c",
        scope="user/*.rs",
        grant_id="g1",
        lifetime=99999,
    )
    claims = verify_access_token(token, settings)
    assert claims["exp"] - claims["iat"] == 3600
    short = verify_access_token(
        issue_access_token(settings, user=user, client_id="c", scope="x", grant_id="g1", lifetime=120), settings
    )
    assert short["exp"] - short["iat"] == 120


def test_jwks_has_the_public_key_with_rfc7638_kid(settings) -> None:
    doc = jwks(settings)
    (key,) = doc["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert "d" not in key and "p" not in key
    assert key["kid"] == RSAKey.import_key({k: key[k] for k in ("kty", "n", "e")}).thumbprint()


def test_expired(settings, user) -> None:
    old = _sign(settings, _claims(settings, user, exp=int(time.time()) - 1, iat=int(time.time()) - 3600))
    with pytest.raises(InvalidToken, match="expired"):
        verify_access_token(old, settings)


def test_B7_a_token_works_until_its_exp_and_not_a_second_after(settings, user) -> None:
    """B7 on a frozen clock: an hour of life, then 401's cause, "expired"."""
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        token = issue_access_token(settings, user=user, client_id="c", scope="user/*.rs", grant_id="g1")
        clock.shift(settings.access_token_seconds - 1)
        assert verify_access_token(token, settings)["sub"] == user.id
        clock.shift(1)
        with pytest.raises(InvalidToken, match="expired"):
            verify_access_token(token, settings)


def test_defect6_a_signed_token_living_ten_years_is_refused(settings, user) -> None:
    """Defect 6: even with our key, exp - iat above the configured maximum is refused."""
    now = int(time.time())
    decade = _sign(settings, _claims(settings, user, iat=now, exp=now + 10 * 365 * 86400))
    with pytest.raises(InvalidToken, match="lifetime"):
        verify_access_token(decade, settings)
    just_over = _sign(settings, _claims(settings, user, iat=now, exp=now + settings.access_token_seconds + 1))
    with pytest.raises(InvalidToken, match="lifetime"):
        verify_access_token(just_over, settings)
    shorter = settings.with_(access_token_seconds=600)
    with pytest.raises(InvalidToken, match="lifetime"):
        verify_access_token(_sign(settings, _claims(settings, user, iat=now, exp=now + 900)), shorter)
    assert verify_access_token(_sign(settings, _claims(settings, user, iat=now, exp=now + 600)), shorter)


def test_defect6_a_future_nbf_is_refused_until_it_comes(settings, user) -> None:
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        now = int(time.time())
        later = _sign(settings, _claims(settings, user, iat=now, nbf=now + 600, exp=now + 900))
        with pytest.raises(InvalidToken, match="not valid yet"):
            verify_access_token(later, settings)
        clock.shift(600)
        assert verify_access_token(later, settings)["nbf"] == now + 600
    for odd in ("soon", 1.5, True):
        with pytest.raises(InvalidToken, match="malformed"):
            verify_access_token(_sign(settings, _claims(settings, user, nbf=odd)), settings)


def test_wrong_audience_and_issuer(settings, user) -> None:
    with pytest.raises(InvalidToken, match="audience"):
        verify_access_token(_sign(settings, _claims(settings, user, aud="https://other.example/fhir")), settings)
    with pytest.raises(InvalidToken, match="audience"):
        verify_access_token(_sign(settings, _claims(settings, user, aud=["https://other.example/fhir"])), settings)
    with pytest.raises(InvalidToken, match="issuer"):
        verify_access_token(_sign(settings, _claims(settings, user, iss="https://evil.example/auth")), settings)
    # A token of this server is refused by a server with another base URL.
    token = issue_access_token(settings, user=user, client_id="c", scope="user/*.rs", grant_id="g1")
    with pytest.raises(InvalidToken):
        verify_access_token(token, settings.with_(base_url="https://elsewhere.example"))


def test_bad_signature_other_key_and_tampering(settings, user) -> None:
    other = RSAKey.generate_key(2048)
    with pytest.raises(InvalidToken, match="signature"):
        verify_access_token(_sign(settings, _claims(settings, user), key=other), settings)
    good = issue_access_token(settings, user=user, client_id="c", scope="user/*.rs", grant_id="g1")
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        verify_access_token(f"{head}.{forged}.{sig}", settings)


def test_algorithm_confusion_and_none_are_refused(settings, user) -> None:
    # HS256 "signed" with the public key (the classic confusion attack), built by hand.
    public_pem = signing_key(settings).key.as_pem(private=False)
    head = _b64(json.dumps({"alg": "HS256", "kid": signing_key(settings).kid}).encode())
    body = _b64(json.dumps(_claims(settings, user)).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        verify_access_token(f"{head}.{body}.{_b64(mac)}", settings)
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(_claims(settings, user)).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify_access_token(f"{header}.{body}.", settings)


def test_missing_claims_unknown_kid_and_garbage(settings, user) -> None:
    with pytest.raises(InvalidToken, match="missing"):
        verify_access_token(_sign(settings, _claims(settings, user, role=None)), settings)
    with pytest.raises(InvalidToken, match="unknown key"):
        verify_access_token(_sign(settings, _claims(settings, user), kid="other-kid"), settings)
    with pytest.raises(InvalidToken, match="future"):
        verify_access_token(_sign(settings, _claims(settings, user, iat=int(time.time()) + 600)), settings)
    for junk in ("", "abc", "a.b.c", "a.b", "x" * 9000, None, 42):
        with pytest.raises(InvalidToken):
            verify_access_token(junk, settings)  # type: ignore[arg-type]
