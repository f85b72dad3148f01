"""Signing keys in configuration, rotated by time (smart_auth.signing_keys).

A rotation end to end on a frozen clock: key ``a`` signs; key ``b`` is configured with an
active-from an hour ahead, so the JWKS publishes it while ``a`` still signs; after that
instant ``b`` signs and ``a``'s tokens still verify; once ``a``'s last token has expired
``a`` leaves the JWKS and a token naming it is invalid. Keys come from PEM files through
JWT_SIGNING_KEYS (load_settings), as an operator configures them.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from fhirserver.cli import main
from fhirserver.config import Settings, SettingsError, load_settings
from smart_auth import signing_keys, tokens
from smart_auth.tokens import InvalidToken, issue_access_token, issue_id_token, verify_access_token
from tests.auth.support import build_app, make_user
from tests.support import test_env

T0 = datetime(2026, 7, 1, 11, 0, tzinfo=UTC)  # a signs
T1 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # b's active-from
RETIRED = T1 + timedelta(seconds=signing_keys.MAX_TOKEN_LIFETIME + signing_keys.CLOCK_SKEW_SECONDS)


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("jwt-keys")
    files = {}
    for name in ("a", "b", "stranger"):
        files[name] = folder / f"{name}.pem"
        files[name].write_text(_pem())
    return files


def _env(settings: Settings, tmp: Path, **extra: str) -> dict[str, str]:
    """The run's settings as an environment, with the given key variables instead of the run's key."""
    return test_env(tmp, settings.database_url, int(settings.base_url.rsplit(":", 1)[1]), **extra)


@pytest.fixture()
def rotated(settings: Settings, pem_files: dict[str, Path], tmp_path: Path) -> Settings:
    spec = f"a:{pem_files['a']},b:{pem_files['b']}@{T1.isoformat().replace('+00:00', 'Z')}"
    return load_settings(_env(settings, tmp_path, JWT_SIGNING_KEYS=spec))


def _kid(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


def _kids(jwks: dict[str, Any]) -> list[str]:
    return [k["kid"] for k in jwks["keys"]]


def _token(settings: Settings, user: Any) -> str:
    return issue_access_token(settings, user=user, client_id="app1", scope="user/*.rs", grant_id="g1")


def test_A13_keys_rotation_end_to_end(rotated: Settings, db_session: Any) -> None:
    user = make_user(db_session, rotated)
    with time_machine.travel(T0, tick=False):
        jwks = tokens.jwks(rotated)
        assert _kids(jwks) == ["b", "a"]  # b is published an hour before it signs
        assert all(k["alg"] == "RS256" and k["use"] == "sig" and k["kty"] == "RSA" for k in jwks["keys"])
        assert all("d" not in k and "p" not in k for k in jwks["keys"])  # public parts only
    with time_machine.travel(T1 - timedelta(minutes=5), tick=False):
        old = _token(rotated, user)
        old_id = issue_id_token(rotated, user=user, client_id="app1", sid="s1")
        assert _kid(old) == "a" and _kid(old_id) == "a"  # b is not the signer yet
    with time_machine.travel(T1 + timedelta(minutes=10), tick=False):
        new = _token(rotated, user)
        assert _kid(new) == "b"
        assert verify_access_token(old, rotated)["sub"] == user.id  # a's tokens still verify
        assert verify_access_token(new, rotated)["sub"] == user.id
        assert tokens.verify_id_token_hint(old_id, rotated, "app1")["sid"] == "s1"
        assert _kids(tokens.jwks(rotated)) == ["b", "a"]  # a stays published while its tokens live
    with time_machine.travel(RETIRED - timedelta(seconds=1), tick=False):
        assert _kids(tokens.jwks(rotated)) == ["b", "a"]
    with time_machine.travel(RETIRED, tick=False):
        assert _kids(tokens.jwks(rotated)) == ["b"]  # a's last token has expired: a is dropped
        # Even a token with fresh times signed with a is now invalid: its key is no longer published.
        fresh_a = _sign_with(rotated, "a", user)
        with pytest.raises(InvalidToken, match="unknown key"):
            verify_access_token(fresh_a, rotated)
        with pytest.raises(InvalidToken):
            tokens.verify_id_token_hint(old_id, rotated, "app1")
        assert verify_access_token(_token(rotated, user), rotated)["sub"] == user.id


def _sign_with(settings: Settings, kid: str, user: Any, pem: str | None = None) -> str:
    """A token with good claims and fresh times, signed by configured key ``kid`` (or ``pem``)."""
    if pem is None:  # the configured key, whatever its state now
        ring = signing_keys.key_ring(settings, now=0)
        key = next(k.key for k in ring.keys if k.kid == kid)
    else:
        key = RSAKey.import_key(pem)
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": tokens.issuer(settings),
        "sub": user.id,
        "aud": settings.fhir_base,
        "client_id": "app1",
        "scope": "user/*.rs",
        "exp": now + 300,
        "iat": now,
        "jti": "j",
        "gid": "g1",
        "role": user.role,
    }
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, key, algorithms=["RS256"])


def test_A13_jwks_is_served_with_a_cache_lifetime_below_the_publish_lead(rotated: Settings) -> None:
    web = build_app(rotated).test_client()
    with time_machine.travel(T0, tick=False):
        r = web.get("/auth/jwks")
    assert r.status_code == 200 and _kids(r.json) == ["b", "a"]
    assert r.headers["Cache-Control"] == f"public, max-age={signing_keys.JWKS_MAX_AGE}"
    assert (T1 - T0).total_seconds() > signing_keys.JWKS_MAX_AGE  # the configured lead covers the caches


def test_A13_unknown_kid_or_a_missing_kid_is_refused(rotated: Settings, db_session: Any, pem_files) -> None:
    user = make_user(db_session, rotated)
    stranger = pem_files["stranger"].read_text()
    with time_machine.travel(T1 + timedelta(minutes=1), tick=False):
        with pytest.raises(InvalidToken, match="unknown key"):
            verify_access_token(_sign_with(rotated, "zzz", user, pem=stranger), rotated)
        with pytest.raises(InvalidToken, match="bad signature"):  # a published kid, another key
            verify_access_token(_sign_with(rotated, "b", user, pem=stranger), rotated)
        token = _token(rotated, user)
        head, _, rest = token.partition(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=="))
        del header["kid"]
        no_kid = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode() + "." + rest
        with pytest.raises(InvalidToken, match="unknown key"):
            verify_access_token(no_kid, rotated)


def test_keys_status_shows_which_key_signs_and_which_only_verify(
    settings: Settings, pem_files: dict[str, Path], tmp_path: Path
) -> None:
    spec = f"a:{pem_files['a']},b:{pem_files['b']}@{T1.isoformat()}"
    env = _env(settings, tmp_path, JWT_SIGNING_KEYS=spec)
    secrets = {pem_files[n].read_text() for n in ("a", "b")}

    def status(at: datetime) -> str:
        with time_machine.travel(at, tick=False):
            result = CliRunner().invoke(main, ["keys", "status"], env=env)
        assert result.exit_code == 0, result.output
        assert not any(line in result.output for s in secrets for line in s.splitlines()[1:-1])  # no key material
        return result.output

    before = status(T0).splitlines()
    assert before[0].split() == ["kid", "alg", "state"]
    assert (
        before[1].split()[:2] == ["b", "RS256"]
        and "verify-only: published, signs from 2026-07-01T12:00:00Z" in before[1]
    )
    assert before[2].split()[:3] == ["a", "RS256", "signing"]
    soon = status(T1 - timedelta(seconds=60))
    assert "warning: b signs in less than the JWKS cache lifetime" in soon
    after = status(T1 + timedelta(minutes=1)).splitlines()
    assert "signing since 2026-07-01T12:00:00Z" in after[1]
    assert "verify-only: retiring until 2026-07-01T13:00:30Z" in after[2]
    gone = status(RETIRED).splitlines()
    assert gone[2].startswith("a") and "retired since" in gone[2] and "remove it" in gone[2]


def test_a_single_jwt_private_key_pem_alone_still_works(settings: Settings, db_session: Any, tmp_path: Path) -> None:
    env = _env(settings, tmp_path, JWT_PRIVATE_KEY_PEM=settings.jwt_private_key_pem)
    env.update(FHIRSERVER_ENV="production", SECRET_KEY="s" * 40, PORTAL_CLIENT_SECRET="p", CONSOLE_CLIENT_SECRET="c")
    single = load_settings(env)
    assert single.jwt_signing_keys == () and not single.dev_mode
    user = make_user(db_session, settings)
    token = _token(single, user)
    thumbprint = RSAKey.import_key(settings.jwt_private_key_pem).thumbprint()
    assert _kid(token) == thumbprint  # the RFC 7638 kid of before: tokens in flight survive the upgrade
    assert verify_access_token(token, single)["sub"] == user.id
    assert _kids(tokens.jwks(single)) == [thumbprint]
    result = CliRunner().invoke(main, ["keys", "status"], env=env)
    assert result.exit_code == 0 and f"{thumbprint}  RS256  signing" in result.output


def test_a_key_without_kid_in_the_list_keeps_its_thumbprint(settings: Settings, pem_files, tmp_path: Path) -> None:
    """Moving from JWT_PRIVATE_KEY_FILE to JWT_SIGNING_KEYS: list the old file without a kid."""
    later = "2030-01-01T00:00:00+00:00"
    moved = load_settings(_env(settings, tmp_path, JWT_SIGNING_KEYS=f"{pem_files['a']},b:{pem_files['b']}@{later}"))
    ring = signing_keys.key_ring(moved)
    assert ring.signer.kid == RSAKey.import_key(pem_files["a"].read_text()).thumbprint()
    assert [k.state for k in ring.keys] == ["next", "signing"]


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        ({"JWT_SIGNING_KEYS": "a:{a},b:{b}"}, "same active-from"),
        ({"JWT_SIGNING_KEYS": "a:{a},a:{b}@2030-01-01T00:00:00Z"}, "same key id"),
        ({"JWT_SIGNING_KEYS": "a:{a}@2030-01-01T00:00:00"}, "with a zone"),
        ({"JWT_SIGNING_KEYS": "a:{a}@tomorrow"}, "with a zone"),
        ({"JWT_SIGNING_KEYS": "a:/nonexistent/a.pem"}, "cannot read"),
        ({"JWT_SIGNING_KEYS": "a:{a}", "JWT_PRIVATE_KEY_PEM": "x"}, "not both"),
    ],
)
def test_bad_key_configuration_is_one_clear_error(settings, pem_files, tmp_path, extra, phrase) -> None:
    env = _env(settings, tmp_path, **{k: v.format(a=pem_files["a"], b=pem_files["b"]) for k, v in extra.items()})
    with pytest.raises(SettingsError, match=phrase) as info:
        load_settings(env)
    assert "PRIVATE KEY" not in str(info.value)


def test_a_ring_whose_keys_all_start_later_does_not_start(settings, pem_files, tmp_path: Path) -> None:
    later = load_settings(_env(settings, tmp_path, JWT_SIGNING_KEYS=f"a:{pem_files['a']}@2030-01-01T00:00:00Z"))
    with pytest.raises(signing_keys.KeyConfigError, match="active yet"):
        build_app(later)
    env = _env(settings, tmp_path, JWT_SIGNING_KEYS=f"a:{pem_files['a']}@2030-01-01T00:00:00Z")
    result = CliRunner().invoke(main, ["keys", "status"], env=env)
    assert result.exit_code == 1 and "active yet" in result.output
