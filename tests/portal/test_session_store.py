"""The portal's session store keeps nothing usable: hashed keys, AES-256-GCM sealed values.

The defect: Flask-Session kept each session under ``portal:<cookie value>`` with the access
and refresh tokens in clear, so a Redis dump (or a copy of var/portal-sessions) gave live
sessions. Both backends are checked: the filesystem cache (development) and the real Redis
(production; this run's own database from the ``redis_url`` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from portal_app.app import create_portal_app
from portal_app.config import PortalConfig
from portal_app.sessions import COOKIE_NAME, SessionSeal, store_key
from tests.portal.portal_sessions import cookie_of, portal_store, realm_tokens
from tests.portal.test_portal_app import ROOT, get, make_app
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import csrf, login
from tests.portal.test_portal_live import practice as practice

SENTINELS = {
    "access_token": "AT-sentinel-7f3a",
    "refresh_token": "RT-sentinel-8b4c",
    "id_token": "ID-sentinel-9d5e",
    "name": "Zyxwyn Sentinelle",  # a patient's name on a waiting credentials sheet (PHI)
    "password": "OTP-sentinel-0e6f",
}


# -- the seal ------------------------------------------------------------------------------------


def test_seal_opens_only_what_it_sealed_under_the_same_key() -> None:
    seal = SessionSeal(b"s" * 32)
    data = {"realms": {"patient": {"access_token": SENTINELS["access_token"]}}, "n": 1}
    blob = seal.seal(data, "portal:aa")
    assert SENTINELS["access_token"].encode() not in blob
    assert seal.open(blob, "portal:aa") == data
    assert seal.seal(data, "portal:aa") != blob  # a fresh nonce every time
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    assert seal.open(tampered, "portal:aa") is None
    assert seal.open(blob, "portal:bb") is None  # moved under another key
    assert SessionSeal(b"t" * 32).open(blob, "portal:aa") is None  # another key
    for junk in (None, b"", b"\x01", b"\x02" + blob[1:], "text", 42):
        assert seal.open(junk, "portal:aa") is None


def test_session_key_is_derived_from_the_secret_key_unless_configured() -> None:
    def config(secret: str = "k1", key: bytes | str | None = None) -> PortalConfig:
        return PortalConfig("http://h", secret, "a", "b", "filesystem:///tmp/x", session_encryption_key=key)

    derived = config().session_key()
    assert len(derived) == 32 and derived == config().session_key()
    assert derived != config("k2").session_key()
    assert b"k1" not in derived
    raw = bytes(range(32))
    assert config(key=raw).session_key() == raw
    assert config(key=base64.b64encode(raw).decode()).session_key() == raw
    assert config(key=base64.urlsafe_b64encode(raw).decode()).session_key() == raw
    for bad in (b"short", "bm90IDMyIGJ5dGVz", "not base64 at all!", "é" * 44):
        with pytest.raises(ValueError, match="32 bytes") as info:
            config(key=bad).session_key()
        assert str(bad) not in str(info.value)


def test_a_bad_session_encryption_key_stops_the_portal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session_encryption_key"):
        make_app(f"filesystem://{tmp_path}/s", session_encryption_key="too-short")


def test_from_env_reads_the_session_encryption_key() -> None:
    key = base64.b64encode(b"e" * 32).decode()
    env = {"SECRET_KEY": "k", "PORTAL_CLIENT_SECRET": "p", "CONSOLE_CLIENT_SECRET": "c"}
    assert PortalConfig.from_env({**env, "PORTAL_SESSION_ENCRYPTION_KEY": key}).session_key() == b"e" * 32
    assert PortalConfig.from_env(env).session_encryption_key is None


# -- both backends, through the portal app ------------------------------------------------------


class Backend:
    """Raw access to one store, as someone holding a dump of it would have."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.iface = app.session_interface

    def raw(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def everything(self) -> list[tuple[str, bytes]]:
        """(name, content) of every stored entry: Redis keys, or the cache's file names."""
        raise NotImplementedError


class RedisBackend(Backend):
    def raw(self, key: str) -> bytes | None:
        value = self.iface.client.get(key)
        return bytes(value) if value is not None else None

    def put(self, key: str, value: bytes) -> None:
        self.iface.client.set(key, value, ex=600)

    def everything(self) -> list[tuple[str, bytes]]:
        client = self.iface.client
        return [(k.decode(), bytes(client.get(k) or b"")) for k in client.scan_iter("*") if client.type(k) == b"string"]


class FileBackend(Backend):
    def raw(self, key: str) -> bytes | None:
        value = self.iface.cache.get(key)
        return bytes(value) if value is not None else None

    def put(self, key: str, value: bytes) -> None:
        self.iface.cache.set(key, value, timeout=600)

    def filename(self, key: str) -> Path:
        return Path(self.iface.cache._get_filename(key))

    def everything(self) -> list[tuple[str, bytes]]:
        folder = Path(self.iface.cache._path)
        return [(p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file()]


@pytest.fixture(params=["filesystem", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        yield RedisBackend(make_app(url))
    else:
        yield FileBackend(make_app(f"filesystem://{tmp_path / 'sessions'}"))


def sign_in_with_sentinels(web: Any) -> str:
    """A signed-in session holding sentinel tokens and a waiting credentials sheet; its id."""
    with web.session_transaction(base_url=ROOT) as sess:
        sess["realms"] = {
            "patient": {
                "access_token": SENTINELS["access_token"],
                "expires_at": time.time() + 600,
                "scope": "openid",
                "refresh_token": SENTINELS["refresh_token"],
                "patient": "p1",
                "id_token": SENTINELS["id_token"],
            }
        }
        sess["portal_sheets"] = {"p1": {"t": time.time(), "name": SENTINELS["name"], "password": SENTINELS["password"]}}
    cookie = web.get_cookie(COOKIE_NAME, domain="portal.test", path="/")
    assert cookie is not None
    return str(cookie.value)


def assert_store_gives_nothing_away(backend: Backend, sid: str, *secrets: str) -> None:
    entries = backend.everything()
    assert entries, "the session must be stored"
    for name, content in entries:
        assert sid not in name, "a store key names the cookie's session id"
        assert sid.encode() not in content
        for secret in secrets:
            assert secret.encode() not in content, "a stored value holds a token or PHI in clear"
    assert backend.raw(store_key(sid)) is not None, "kept under the hash of the session id"
    assert backend.raw(f"portal:{sid}") is None


def test_keys_are_hashed_and_values_sealed(backend: Backend) -> None:
    web = backend.app.test_client()
    sid = sign_in_with_sentinels(web)
    assert store_key(sid) == "portal:" + hashlib.sha256(sid.encode()).hexdigest()
    assert_store_gives_nothing_away(backend, sid, *SENTINELS.values())
    if isinstance(backend, FileBackend):
        assert not backend.filename(f"portal:{sid}").exists()  # the file Flask-Session used to write
        assert backend.filename(store_key(sid)).exists()
    # The portal itself still reads it back.
    with web.session_transaction(base_url=ROOT) as sess:
        assert sess["realms"]["patient"]["refresh_token"] == SENTINELS["refresh_token"]


def _signed_out(web: Any) -> None:
    """The next request sees no sign-in and answers normally (never a 500)."""
    resp = get(web, "/")
    assert resp.status_code == 200, resp.status_code
    assert "Sign in to read secure messages" in resp.get_data(as_text=True)
    with web.session_transaction(base_url=ROOT) as sess:
        assert not sess.get("realms") and not sess.get("portal_sheets")


def test_a_tampered_value_is_a_signed_out_session(backend: Backend) -> None:
    web = backend.app.test_client()
    sid = sign_in_with_sentinels(web)
    blob = backend.raw(store_key(sid))
    assert blob
    backend.put(store_key(sid), blob[:-1] + bytes([blob[-1] ^ 1]))
    _signed_out(web)


def test_a_value_copied_under_another_session_does_not_open(backend: Backend) -> None:
    """A store writer who copies Alice's sealed value under Mallory's key does not become Alice."""
    alice, mallory = backend.app.test_client(), backend.app.test_client()
    alice_sid = sign_in_with_sentinels(alice)
    get(mallory, "/")
    mallory_sid = mallory.get_cookie(COOKIE_NAME, domain="portal.test", path="/").value
    blob = backend.raw(store_key(alice_sid))
    assert blob and mallory_sid != alice_sid
    backend.put(store_key(mallory_sid), blob)
    _signed_out(mallory)


def test_a_value_sealed_under_another_key_is_a_signed_out_session(backend: Backend) -> None:
    """A new secret (or session key) signs everybody out instead of failing."""
    web = backend.app.test_client()
    sid = sign_in_with_sentinels(web)
    other = SessionSeal(b"o" * 32)
    backend.put(store_key(sid), other.seal({"realms": {"patient": {"access_token": "x"}}}, store_key(sid)))
    _signed_out(web)


# -- a real sign-in on each backend --------------------------------------------------------------


def test_after_a_real_sign_in_the_file_store_holds_no_token(
    live_server: Any, practice: Any, settings: Any, clients_seeded: None
) -> None:
    """The live server's own portal (filesystem sessions): a sign-in through the auth server."""
    s = login(live_server.url, "patient", practice.patient_username, practice.password)
    sid = cookie_of(s.cookies)
    store = portal_store(settings)
    tokens = realm_tokens(store, sid, "patient")
    data = store.load(sid) or {}
    backend = FileBackend(create_portal_app(_config_like(settings, settings.portal_session_url)))
    assert_store_gives_nothing_away(
        backend, sid, tokens["access_token"], tokens["refresh_token"], tokens["id_token"], data["csrf_token"]
    )


def _config_like(settings: Any, session_url: str) -> PortalConfig:
    return PortalConfig(
        base_url=settings.base_url,
        secret_key=settings.secret_key,
        patient_client_secret=settings.portal_client_secret,
        console_client_secret=settings.console_client_secret,
        session_url=session_url,
        dev_mode=settings.dev_mode,
    )


def test_after_a_real_sign_in_redis_holds_no_token(
    live_server: Any, practice: Any, settings: Any, clients_seeded: None, redis_url: str
) -> None:
    """A portal on Redis sessions signs in through the live auth server: login, code, token exchange."""
    base = live_server.url
    app = create_portal_app(_config_like(settings, redis_url))
    web = app.test_client()
    portal_root = base + "/portal/"
    start = web.get("/login", base_url=portal_root)
    assert start.status_code == 303
    browser = requests.Session()
    page = browser.get(start.headers["Location"], timeout=30)
    assert page.url.startswith(base + "/auth/login")
    resp = browser.post(
        base + "/auth/login",
        data={"csrf_token": csrf(page.text), "username": practice.patient_username, "password": practice.password},
        timeout=30,
        allow_redirects=False,
    )
    location = resp.headers["Location"]
    while not location.startswith(base + "/portal/callback"):  # the auth server's own redirects
        resp = browser.get(urljoin(base, location), timeout=30, allow_redirects=False)
        assert resp.status_code in (302, 303), resp.status_code
        location = resp.headers["Location"]
    done = web.get("/callback?" + urlsplit(location).query, base_url=portal_root)
    assert done.status_code == 303 and done.headers["Location"] == "/portal/", done.get_data(as_text=True)[:300]
    assert web.get("/", base_url=portal_root).status_code == 200  # the inbox, through the API
    cookie = web.get_cookie(COOKIE_NAME, domain="127.0.0.1", path="/")
    assert cookie is not None
    sid = str(cookie.value)
    data = app.session_interface.load(sid) or {}
    tokens = data["realms"]["patient"]
    assert tokens["access_token"] and tokens["refresh_token"] and tokens["id_token"]
    backend = RedisBackend(app)
    assert_store_gives_nothing_away(
        backend, sid, tokens["access_token"], tokens["refresh_token"], tokens["id_token"], data["csrf_token"]
    )
    assert 0 < app.session_interface.client.ttl(store_key(sid)) <= 15 * 60


def test_sign_in_regenerates_the_session_id_and_drops_the_old_entry(
    live_server: Any, practice: Any, settings: Any, clients_seeded: None
) -> None:
    """No session fixation on the sealed store either: the pre-login id names nothing afterwards."""
    base = live_server.url
    s = requests.Session()
    page = s.get(base + "/portal/login", timeout=30)
    before = cookie_of(s.cookies)
    store = portal_store(settings)
    assert (store.load(before) or {}).get("pending"), "the sign-in in progress waits in the session"
    resp = s.post(
        base + "/auth/login",
        data={"csrf_token": csrf(page.text), "username": practice.patient_username, "password": practice.password},
        timeout=30,
    )
    assert resp.url == base + "/portal/"
    after = cookie_of(s.cookies)
    assert after != before
    assert store.load(before) is None
    assert realm_tokens(store, after, "patient")
