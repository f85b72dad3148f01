"""Malformed requests to every login-server endpoint get a clear 4xx, never a 500."""

from __future__ import annotations

import base64

import pytest

from tests.auth.support import authorize_params, csrf_from, login, make_client, make_user, new_web_client, pkce_pair


@pytest.fixture()
def web(app):
    return new_web_client(app)


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({}, 400, "unsupported_grant_type"),
        ({"json": {"grant_type": "authorization_code", "code": "x"}}, 400, "unsupported_grant_type"),
        ({"data": b"\xff\xfe\x00garbage", "content_type": "application/x-www-form-urlencoded"}, 400, None),
        ({"data": {"grant_type": "password", "username": "a", "password": "b"}}, 400, "unsupported_grant_type"),
        ({"data": {"grant_type": "client_credentials"}}, 400, "unsupported_grant_type"),
        ({"data": {"grant_type": "authorization_code"}}, None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "client_id": "nobody", "code": "c"}}, None, "invalid_client"),
        ({"data": {"grant_type": "refresh_token", "client_id": "nobody"}}, None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "code": "c"}, "headers": {"Authorization": "Basic !!!"}},
         None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "code": "c"}, "headers": _basic(b"no-colon-here")},
         None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "code": "c"}, "headers": _basic(b"\xff\xfe:\xff")},
         None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "code": "c"}, "headers": {"Authorization": "Bearer x"}},
         None, "invalid_client"),
    ],
)
def test_token_endpoint_malformed(web, kwargs, status, error) -> None:
    r = web.post("/auth/token", **kwargs)
    assert 400 <= r.status_code < 500, r.data[:300]
    if status:
        assert r.status_code == status
    assert r.mimetype == "application/json"
    if error:
        assert r.json["error"] == error


def test_token_endpoint_bad_values_for_a_real_client(web, db_session) -> None:
    app_ = make_client(db_session)
    base = {"grant_type": "authorization_code", "client_id": app_.client_id, "redirect_uri": app_.redirect_uri}
    for extra in ({}, {"code": ""}, {"code": "x" * 5000}, {"code": "c", "code_verifier": "short"},
                  {"code": ["a", "b"]}):
        r = web.post("/auth/token", data={**base, **extra})
        assert r.status_code == 400, (extra, r.data)
    r = web.post("/auth/token", data={"grant_type": "refresh_token", "client_id": app_.client_id})
    assert r.status_code == 400 and r.json["error"] == "invalid_request"
    r = web.post("/auth/token", data={"grant_type": "refresh_token", "client_id": app_.client_id,
                                      "refresh_token": "r" * 5000})
    assert r.status_code == 400


def test_token_endpoint_methods_and_size(web, settings) -> None:
    assert web.get("/auth/token").status_code == 405
    big = {"grant_type": "authorization_code", "code": "x" * (settings.max_body_bytes + 10)}
    assert web.post("/auth/token", data=big).status_code == 413


def test_authorize_malformed(web, db_session, settings) -> None:
    app_ = make_client(db_session)
    _, challenge = pkce_pair()
    good = authorize_params(settings, app_, "launch/patient patient/*.rs", challenge)
    # Repeated parameters: page, no redirect.
    r = web.get("/auth/authorize?" + "&".join(f"{k}={v}" for k, v in good.items()) + "&state=again")
    assert r.status_code == 400 and "Location" not in r.headers
    r = web.get("/auth/authorize", query_string={**good, "code_challenge": ["a" * 43, "b" * 43]})
    assert r.status_code == 400 and "Location" not in r.headers
    # Over-long values, empty request, unsupported response types and methods.
    assert web.get("/auth/authorize", query_string={**good, "state": "s" * 5000}).status_code == 400
    assert web.get("/auth/authorize").status_code == 400
    r = web.get("/auth/authorize", query_string={**good, "response_type": "token"})
    assert r.status_code == 302 and "error=unsupported_response_type" in r.headers["Location"]
    assert web.put("/auth/authorize").status_code == 405
    r = web.get("/auth/authorize?client_id=%ff%fe&redirect_uri=%00")
    assert 400 <= r.status_code < 500


def test_pages_without_a_pending_request_or_login(web, db_session, settings) -> None:
    for path in ("/auth/authorize/continue", "/auth/authorize/consent", "/auth/authorize/patient"):
        r = web.get(path)
        assert r.status_code == 400 and b"No sign-in in progress" in r.data, path
    assert web.get("/auth/password").status_code == 302
    page = web.get("/auth/login")
    r = web.post("/auth/password", data={"csrf_token": csrf_from(page.data), "current_password": "x"})
    assert r.status_code == 302
    user = make_user(db_session, settings)
    login(web, user.username)
    for path in ("/auth/authorize/continue", "/auth/authorize/consent", "/auth/authorize/patient"):
        assert web.get(path).status_code == 400, path
    page = web.get("/auth/password")
    r = web.post("/auth/authorize/consent", data={"csrf_token": csrf_from(page.data), "action": "approve"})
    assert r.status_code == 400


def test_login_and_password_forms_malformed(web, db_session, settings) -> None:
    page = web.get("/auth/login")
    token = csrf_from(page.data)
    for data in ({}, {"username": ""}, {"password": "x"}, {"username": "u" * 5000, "password": "p" * 5000},
                 {"username": ["a", "b"], "password": "x"}):
        r = web.post("/auth/login", data={"csrf_token": token, **data})
        assert r.status_code == 400, data
    user = make_user(db_session, settings)
    login(web, user.username)
    page = web.get("/auth/password")
    token = csrf_from(page.data)
    for data in ({}, {"current_password": "x"}, {"new_password": "y" * 5000, "confirm_password": "y" * 5000,
                                                 "current_password": "z"}):
        r = web.post("/auth/password", data={"csrf_token": token, **data})
        assert r.status_code == 400, data
    assert web.post("/auth/jwks").status_code == 405
    assert web.delete("/auth/login").status_code == 405
