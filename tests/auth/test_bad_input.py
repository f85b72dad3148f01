"""Malformed requests to every login-server endpoint get a clear 4xx, never a 500."""

from __future__ import annotations

import base64

import pytest

from tests.auth.support import authorize_params, csrf_from, login, make_client, make_user, pkce_pair


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({}, 400, "unsupported_grant_type"),
        ({"json": {"grant_type": "authorization_code", "code": "x"}}, 400, "unsupported_grant_type"),
        ({"data": b"\xff\xfe\x00garbage", "content_type": "application/x-www-form-urlencoded"}, 400, None),
        ({"data": {"grant_type": "password", "username": "a", "password": "b"}}, 400, "unsupported_grant_type"),
        # Supported for backend services (private_key_jwt): without an assertion, no client.
        ({"data": {"grant_type": "client_credentials"}}, 400, "invalid_client"),
        ({"data": {"grant_type": "authorization_code"}}, None, "invalid_client"),
        ({"data": {"grant_type": "authorization_code", "client_id": "nobody", "code": "c"}}, None, "invalid_client"),
        ({"data": {"grant_type": "refresh_token", "client_id": "nobody"}}, None, "invalid_client"),
        (
            {"data": {"grant_type": "authorization_code", "code": "c"}, "headers": {"Authorization": "Basic !!!"}},
            None,
            "invalid_client",
        ),
        (
            {"data": {"grant_type": "authorization_code", "code": "c"}, "headers": _basic(b"no-colon-here")},
            None,
            "invalid_client",
        ),
        (
            {"data": {"grant_type": "authorization_code", "code": "c"}, "headers": _basic(b"\xff\xfe:\xff")},
            None,
            "invalid_client",
        ),
        (
            {"data": {"grant_type": "authorization_code", "code": "c"}, "headers": {"Authorization": "Bearer x"}},
            None,
            "invalid_client",
        ),
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
    for extra in (
        {},
        {"code": ""},
        {"code": "x" * 5000},
        {"code": "c", "code_verifier": "short"},
        {"code": ["a", "b"]},
    ):
        r = web.post("/auth/token", data={**base, **extra})
        assert r.status_code == 400, (extra, r.data)
    r = web.post("/auth/token", data={"grant_type": "refresh_token", "client_id": app_.client_id})
    assert r.status_code == 400 and r.json["error"] == "invalid_request"
    r = web.post(
        "/auth/token", data={"grant_type": "refresh_token", "client_id": app_.client_id, "refresh_token": "r" * 5000}
    )
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
    for data in (
        {},
        {"username": ""},
        {"password": "x"},
        {"username": "u" * 5000, "password": "p" * 5000},
        {"username": ["a", "b"], "password": "x"},
    ):
        r = web.post("/auth/login", data={"csrf_token": token, **data})
        assert r.status_code == 400, data
    user = make_user(db_session, settings)
    login(web, user.username)
    page = web.get("/auth/password")
    token = csrf_from(page.data)
    for data in (
        {},
        {"current_password": "x"},
        {"new_password": "y" * 5000, "confirm_password": "y" * 5000, "current_password": "z"},
    ):
        r = web.post("/auth/password", data={"csrf_token": token, **data})
        assert r.status_code == 400, data
    assert web.post("/auth/jwks").status_code == 405
    assert web.delete("/auth/login").status_code == 405


# -- characters no parameter may carry, values that must not come back -------------------------

SENTINEL = "Qz7!sentinel"
BAD_CHARS = {
    "nul": f"\x00{SENTINEL}",
    "line-break": f"a\r\n{SENTINEL}",
    "non-ascii": f"\u00e9{SENTINEL}",
    "replacement": f"\ufffd{SENTINEL}",
}


def _grant_rows(db_session) -> dict[str, int]:
    """Rows that a refused authorization or token request must not add."""
    from sqlalchemy import func, select

    from smart_auth.models import AuthorizationCode, Consent, RefreshToken, UserAccount

    db_session.rollback()  # a fresh snapshot (the session may hold an older transaction)
    counts = {
        m.__tablename__: db_session.scalar(select(func.count()).select_from(m))
        for m in (AuthorizationCode, RefreshToken, Consent, UserAccount)
    }
    db_session.rollback()  # end the transaction: on SQLite it holds the write lock the app needs
    return counts


@pytest.mark.parametrize("bad", sorted(BAD_CHARS))
@pytest.mark.parametrize(
    "param",
    [
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "aud",
        "code_challenge",
        "code_challenge_method",
        "launch",
        "nonce",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_authorize_parameters_with_control_or_non_ascii_characters(
    web, db_session, settings, param, bad, method
) -> None:
    """NUL reached PostgreSQL (a 500), and Authlib refused to build an error description holding
    non-ASCII (another 500). RFC 6749 parameters are printable ASCII: refused on a page, no redirect."""
    app_ = make_client(db_session)
    _, challenge = pkce_pair()
    params = {**authorize_params(settings, app_, "launch/patient patient/*.rs", challenge), param: BAD_CHARS[bad]}
    before = _grant_rows(db_session)
    # (the first authorize request may be a form POST: it is CSRF-exempt)
    r = web.get("/auth/authorize", query_string=params) if method == "GET" else web.post("/auth/authorize", data=params)
    assert r.status_code == 400, r.data[:300]
    assert "Location" not in r.headers
    assert SENTINEL.encode() not in r.data
    assert _grant_rows(db_session) == before


def test_authorize_error_page_does_not_repeat_the_redirect_uri(web, db_session, settings) -> None:
    app_ = make_client(db_session)
    _, challenge = pkce_pair()
    for uri in (f"https://elsewhere.example/{SENTINEL}", f"{app_.redirect_uri}?x={SENTINEL}", SENTINEL):
        params = authorize_params(settings, app_, "launch/patient patient/*.rs", challenge, redirect_uri=uri)
        r = web.get("/auth/authorize", query_string=params)
        assert r.status_code == 400 and "Location" not in r.headers
        assert SENTINEL.encode() not in r.data, uri
        assert b"not valid" in r.data


@pytest.mark.parametrize("bad", sorted(BAD_CHARS))
@pytest.mark.parametrize(
    "param",
    ["grant_type", "client_id", "code", "redirect_uri", "code_verifier", "client_secret", "refresh_token", "scope"],
)
def test_token_parameters_with_control_or_non_ascii_characters(web, db_session, param, bad) -> None:
    """A NUL client_id reached PostgreSQL (a 500), also through the CORS check of an Origin request."""
    app_ = make_client(db_session)
    base = {
        "grant_type": "authorization_code",
        "client_id": app_.client_id,
        "code": "c" * 43,
        "redirect_uri": app_.redirect_uri,
        "code_verifier": "v" * 50,
    }
    if param in ("refresh_token", "scope"):
        base = {"grant_type": "refresh_token", "client_id": app_.client_id, "refresh_token": "r" * 43}
    before = _grant_rows(db_session)
    for headers in ({}, {"Origin": "https://app.example"}):
        r = web.post("/auth/token", data={**base, param: BAD_CHARS[bad]}, headers=headers)
        assert r.status_code in (400, 401), (r.status_code, r.data[:300])
        assert r.mimetype == "application/json" and r.json["error"]
        assert SENTINEL.encode() not in r.data
    assert _grant_rows(db_session) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00" + SENTINEL.encode() + b":secret",
        b"client:\x00" + SENTINEL.encode(),
        b"%00" + SENTINEL.encode() + b":secret",
        SENTINEL.encode() + b"\xff:\xfe",
    ],
)
def test_token_basic_credentials_with_nul_or_bad_bytes(web, db_session, raw) -> None:
    before = _grant_rows(db_session)
    r = web.post("/auth/token", data={"grant_type": "authorization_code", "code": "c"}, headers=_basic(raw))
    assert r.status_code == 401 and r.json["error"] == "invalid_client", r.data[:300]
    assert SENTINEL.encode() not in r.data
    assert _grant_rows(db_session) == before


@pytest.mark.parametrize("bad", sorted(BAD_CHARS))
def test_login_with_control_or_non_ascii_characters(web, db_session, settings, bad) -> None:
    """A NUL username reached PostgreSQL (a 500). Every such login is an ordinary failed login;
    the password is never written back into the page."""
    username = make_user(db_session, settings).username
    token = csrf_from(web.get("/auth/login").data)
    before = _grant_rows(db_session)
    for data in (
        {"username": BAD_CHARS[bad], "password": "whatever password"},
        {"username": username, "password": BAD_CHARS[bad]},
        {"username": username + BAD_CHARS[bad], "password": "correct horse battery staple"},
    ):
        r = web.post("/auth/login", data={"csrf_token": token, **data})
        assert r.status_code == 400, (data, r.data[:300])
        assert b"not correct" in r.data
        if data["password"] == BAD_CHARS[bad]:
            assert SENTINEL.encode() not in r.data
    r = web.post(
        "/auth/login",
        data=b"csrf_token=" + token.encode() + b"&username=%FF%00" + SENTINEL.encode() + b"&password=\xff\xfe",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 400
    assert _grant_rows(db_session) == before


@pytest.mark.parametrize(
    "target",
    [
        "https://[::1",
        "http://%5B/",
        "//[/",
        "http://[/x",
        f"/auth/\x00{SENTINEL}",
        f"https://{SENTINEL}.example/",
        f"javascript:{SENTINEL}",
    ],
)
def test_logout_next_that_is_no_url_is_ignored(web, target) -> None:
    """An unclosed IPv6 literal made urlsplit raise: a 500 on the logout page."""
    r = web.get("/auth/logout", query_string={"next": target})
    assert r.status_code == 200, r.data[:300]
    assert SENTINEL.encode() not in r.data
    r = web.post("/auth/logout", data={"csrf_token": csrf_from(r.data), "next": target})
    assert r.status_code == 303
    assert r.headers["Location"].startswith("/auth/login") and SENTINEL not in r.headers["Location"]


def test_discovery_and_jwks_refuse_other_methods(web) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration", "/auth/jwks"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = web.open(path, method=method, data=SENTINEL)
            # Under /fhir the FHIR API answers (a PUT there is an update of an unknown type...): a 4xx.
            if path.startswith("/fhir/"):
                assert 400 <= r.status_code < 500 and r.json["resourceType"] == "OperationOutcome", (path, method)
            else:
                assert r.status_code == 405, (path, method)
            assert SENTINEL.encode() not in r.data
    r = web.get("/.well-known/smart-configuration", query_string={"x": BAD_CHARS["nul"]})
    assert r.status_code == 200 and SENTINEL.encode() not in r.data


@pytest.mark.parametrize("path", ["/auth/revoke", "/auth/introspect", "/auth/end-session"])
def test_token_lifecycle_endpoints_answer_garbage_with_a_4xx_or_an_empty_200(web, path) -> None:
    import base64

    headers = [
        None,
        "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
        "Basic !!!",
        "Basic " + base64.b64encode(b"x" * 5000 + b":y").decode(),
        f"Bearer {SENTINEL}",
    ]
    bodies = [
        {},
        {"token": "\x00"},
        {"token": SENTINEL * 2000},
        {"token": "a.b.c", "token_type_hint": SENTINEL},
        {"id_token_hint": "\x00"},
        {"id_token_hint": f"a.{SENTINEL}.c"},
    ]
    for header in headers:
        for body in bodies:
            r = web.post(path, data=body, headers={"Authorization": header} if header else {})
            assert r.status_code < 500 and SENTINEL.encode() not in r.data, (header, body, r.status_code)
            assert r.status_code in (200, 400, 401), (header, body, r.status_code)
    raw = web.post(path, data=b"\xff\xfe" + SENTINEL.encode(), content_type="application/x-www-form-urlencoded")
    assert raw.status_code in (400, 401) and SENTINEL.encode() not in raw.data
