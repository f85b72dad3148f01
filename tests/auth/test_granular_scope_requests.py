"""C9: asking for SMART 2 granular scopes (``patient/Communication.rs?category=...``).

The grammar (declared filters only, token values taken literally), and each way a scope
is asked for: authorize, consent, refresh narrowing, client registration, the backend
services token request and ``fhirserver token``. Undeclared parameters and malformed
queries are ``invalid_scope`` (a usage error for the CLI); the client's registration
narrows a filtered request like any other, and never lets a filtered registration grant
the unfiltered scope.
"""

from __future__ import annotations

import re

import pytest
from authlib.oauth2.rfc6749 import InvalidScopeError
from click.testing import CliRunner

from fhirserver.cli import main
from fhirserver.core.scopes import ScopeError, ScopeSet, parse_scope, validate_requested
from smart_auth import backend_services, clients, scope_policy
from smart_auth.tokens import verify_access_token
from tests.auth.support import (
    authorize_params,
    csrf_from,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    new_web_client,
    pkce_pair,
    query_of,
    refresh,
)

HL7 = "http://terminology.hl7.org/CodeSystem/communication-category"
NOTIFICATION = f"patient/Communication.rs?category={HL7}|notification"
ALERT = f"patient/Communication.rs?category={HL7}|alert"
REFUSED = (
    "patient/Communication.rs?status=completed",  # a search parameter, but not a declared filter
    "patient/Communication.rs?code=x",  # SMART names code, but Communication declares category only
    "patient/Communication.rs?Category=x",  # names are exact
    f"patient/Communication.rs?category:not={HL7}|notification",  # a modifier would widen
    "patient/Communication.rs?category:missing=true",
    "patient/Communication.rs?category=",
    "patient/Communication.rs?category",
    "patient/Communication.rs?",
    "patient/Communication.rs?=x",
    "patient/Communication.rs?category=a&category=b",
    "patient/Communication.rs?category=a,,b",
    "patient/Communication.rs?category=a|b|c",
    "patient/Communication.rs?category=|",
    "patient/Communication.rs?category=a\\,b",  # FHIR escapes are not interpreted
    f"patient/Communication.rs?category={HL7}%7Cnotification",  # nor percent-encoding
    "patient/Communication.rs?category=" + "x" * 256,  # longer than the index column
    "patient/Communication.rs?category=" + ",".join(f"c{i}" for i in range(21)),
    "patient/*.rs?category=x",  # a filter needs a type that declares it
    "patient/Patient.rs?category=x",  # Patient declares no filters
    "patient/Observation.rs?category=laboratory",  # not a served type: nothing declared
    "patient/Communication.read?category=x",  # v1 has no granular scopes
    "patient/Communication.zz?category=x",
)


@pytest.fixture()
def patient(db_session, settings):
    return make_user(db_session, settings, role="patient")


# --- the grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize("scope", REFUSED)
def test_C9_undeclared_filters_and_malformed_queries_are_refused(scope: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(scope)
    with pytest.raises(ScopeError):
        validate_requested(f"launch/patient {scope}")
    # In a token (never issued that way) it grants nothing: it is not read as unfiltered.
    assert ScopeSet.parse(scope).resources == ()


@pytest.mark.parametrize(
    ("scope", "filters"),
    [
        (NOTIFICATION, (("category", (f"{HL7}|notification",)),)),
        (f"user/Communication.cruds?category={HL7}|a,{HL7}|b", (("category", (f"{HL7}|a", f"{HL7}|b")),)),
        ("patient/Communication.s?category=notification", (("category", ("notification",)),)),
        ("system/Communication.rs?category=|local", (("category", ("|local",)),)),
        (f"patient/Communication.r?category={HL7}|", (("category", (f"{HL7}|",)),)),
    ],
)
def test_C9_declared_filters_parse_into_the_scope(scope: str, filters: tuple) -> None:
    rs = parse_scope(scope)
    assert rs is not None and rs.filters == filters and rs.resource_type == "Communication"
    assert rs.covers("Communication", sorted(rs.permissions)[0])  # interactions are unchanged
    assert rs.query == scope.split("?", 1)[1]


def test_C9_filter_containment_is_token_containment() -> None:
    def within(inner: str, outer: str) -> bool:
        a, b = parse_scope(inner), parse_scope(outer)
        assert a is not None and b is not None
        return a.filter_within(b)

    base = "patient/Communication.rs"
    assert within(NOTIFICATION, base) and not within(base, NOTIFICATION)
    assert within(NOTIFICATION, f"{base}?category=notification")  # code in any system
    assert within(NOTIFICATION, f"{base}?category={HL7}|")  # any code of the system
    assert within(f"{base}?category=|notification", f"{base}?category=notification")
    assert not within(f"{base}?category=notification", NOTIFICATION)
    assert not within(f"{base}?category=http://other.example|notification", NOTIFICATION)
    assert not within(f"{base}?category=|notification", f"{base}?category={HL7}|")
    assert not within(ALERT, NOTIFICATION)
    assert within(NOTIFICATION, f"{base}?category={HL7}|alert,{HL7}|notification")
    assert not within(f"{base}?category={HL7}|alert,{HL7}|notification", NOTIFICATION)


# --- authorize and consent -------------------------------------------------------------------


def test_C9_undeclared_or_malformed_filters_are_invalid_scope_at_authorize(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    assert login(web, patient.username).status_code == 303
    _, challenge = pkce_pair()
    for scope in REFUSED:
        wanted = f"launch/patient {scope}"
        r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, wanted, challenge))
        assert r.status_code == 302, (scope, r.status_code)
        q = query_of(r.headers["Location"])
        assert q["error"] == "invalid_scope" and "code" not in q, scope
        assert scope not in q.get("error_description", "")  # the description never echoes the scope


def test_C9_a_declared_filter_is_granted_as_written(web, db_session, settings, patient) -> None:
    client_app = make_client(db_session)
    scope = f"launch/patient {NOTIFICATION}"
    code, verifier = get_code(web, settings, client_app, patient.username, scope)
    body = exchange(web, client_app, code, verifier).json
    assert body["scope"] == scope
    assert verify_access_token(body["access_token"], settings)["scope"] == scope


def test_C9_the_client_registration_narrows_filtered_scopes(app, db_session, settings, patient) -> None:
    def granted(registered: str, wanted: str) -> str | None:
        client_app = make_client(db_session, scope=f"launch/patient {registered}")
        web = new_web_client(app)
        assert login(web, patient.username).status_code == 303
        verifier, challenge = pkce_pair()
        r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, wanted, challenge))
        q = query_of(r.headers["Location"])
        if "error" in q:
            assert q["error"] == "invalid_scope" and "code" not in q
            return None
        return exchange(web, client_app, q["code"], verifier).json["scope"]

    # An unfiltered registration allows asking for a filtered subset, exactly as written.
    assert granted("patient/Communication.rs", NOTIFICATION) == NOTIFICATION
    assert granted("patient/*.cruds", f"launch/patient {NOTIFICATION}") == f"launch/patient {NOTIFICATION}"
    assert granted("patient/Communication.rs?category=notification", NOTIFICATION) == NOTIFICATION
    # A filtered registration never grants the unfiltered scope: it is narrowed to the filter.
    assert granted(NOTIFICATION, "patient/Communication.rs") == NOTIFICATION
    assert granted(NOTIFICATION, "patient/Communication.cruds") == NOTIFICATION
    assert granted(NOTIFICATION, "patient/*.rs") == NOTIFICATION
    # A filter outside the registered one: nothing grantable.
    assert granted(NOTIFICATION, ALERT) is None
    # A wider filter than the registered one is narrowed to it; one outside it gets nothing.
    assert granted(NOTIFICATION, "patient/Communication.rs?category=notification") == NOTIFICATION
    assert granted(NOTIFICATION, "patient/Communication.rs?category=http://other.example|notification") is None


def test_C9_narrowing_unit_cases() -> None:
    assert scope_policy.for_client([NOTIFICATION], "patient/Communication.r") == [
        f"patient/Communication.r?category={HL7}|notification"
    ]
    assert scope_policy.for_client(["patient/Communication.rs"], f"{NOTIFICATION} patient/Communication.s") == [
        "patient/Communication.s",
        NOTIFICATION,
    ]
    assert scope_policy.covers(["patient/Communication.rs"], NOTIFICATION)
    assert not scope_policy.covers([NOTIFICATION], "patient/Communication.rs")
    assert not scope_policy.covers([NOTIFICATION], f"patient/Communication.rs?category={HL7}|notification,x")


def test_C9_the_consent_page_shows_a_filtered_scope_readably(app, db_session, settings, patient) -> None:
    assert scope_policy.describe(NOTIFICATION) == (
        "Read and search Communication records of the selected patient, only with category notification"
    )
    assert scope_policy.describe(f"user/Communication.rs?category={HL7}|,x").endswith(
        f"only with category any code of {HL7} or x"
    )
    third = make_client(db_session, first_party=False)
    web = new_web_client(app)
    scope = f"launch/patient {NOTIFICATION}"
    verifier, challenge = pkce_pair()
    web.get("/auth/authorize", query_string=authorize_params(settings, third, scope, challenge))
    r = login(web, patient.username)
    r = web.get(r.headers["Location"])
    assert r.headers["Location"].endswith("/auth/authorize/consent")
    html = web.get("/auth/authorize/consent").data.decode()
    assert "only with category notification" in html
    assert NOTIFICATION in re.findall(r'name="scope"[^>]*value="([^"]+)"', html)
    r = web.post(
        "/auth/authorize/consent",
        data={"csrf_token": csrf_from(html), "action": "approve", "scope": scope.split()},
    )
    r = web.get(r.headers["Location"])
    body = exchange(web, third, query_of(r.headers["Location"])["code"], verifier).json
    assert body["scope"] == scope


# --- refresh, registration, backend services, the CLI -----------------------------------------


def test_C9_refresh_may_narrow_to_a_filter_but_never_widen(web, db_session, settings, patient) -> None:
    unfiltered = make_client(db_session, confidential=True)
    code, verifier = get_code(
        web, settings, unfiltered, patient.username, "launch/patient patient/Communication.rs offline_access"
    )
    rt = exchange(web, unfiltered, code, verifier).json["refresh_token"]
    narrowed = refresh(web, unfiltered, rt, scope=NOTIFICATION)
    assert narrowed.status_code == 200 and narrowed.json["scope"] == NOTIFICATION
    rt = narrowed.json["refresh_token"]
    for bad in ("patient/Communication.rs?status=completed", "patient/Communication.rs?category="):
        r = refresh(web, unfiltered, rt, scope=bad)
        assert r.status_code == 400 and r.json["error"] == "invalid_scope", bad

    filtered = make_client(db_session, confidential=True)
    web2 = new_web_client(web.application)
    code, verifier = get_code(
        web2, settings, filtered, patient.username, f"launch/patient {NOTIFICATION} offline_access"
    )
    rt = exchange(web2, filtered, code, verifier).json["refresh_token"]
    for wider in ("patient/Communication.rs", ALERT, f"{NOTIFICATION},{HL7}|alert"):
        r = refresh(web2, filtered, rt, scope=wider)
        assert r.status_code == 400 and r.json["error"] == "invalid_scope", wider
    same = refresh(web2, filtered, rt, scope=NOTIFICATION)
    assert same.status_code == 200 and same.json["scope"] == NOTIFICATION


def test_C9_client_registration_refuses_undeclared_filters(db_session) -> None:
    with pytest.raises(clients.ClientError):
        make_client(db_session, scope="launch/patient patient/Communication.rs?status=completed")
    db_session.rollback()
    assert make_client(db_session, scope=f"launch/patient {NOTIFICATION}").scope.endswith(NOTIFICATION)


def test_C9_backend_services_take_filtered_system_scopes_and_refuse_undeclared_ones() -> None:
    system = f"system/Communication.rs?category={HL7}|notification"
    assert backend_services.granted_scope(system, "system/Communication.rs") == system
    assert backend_services.granted_scope("system/Communication.rs", system) == system
    with pytest.raises(InvalidScopeError):
        backend_services.granted_scope("system/Communication.rs?status=completed", "system/*.rs")
    with pytest.raises(InvalidScopeError):
        backend_services.granted_scope(f"system/Communication.rs?category={HL7}|alert", system)


def test_C9_token_cli_refuses_undeclared_filters(cli_env, db_session, settings) -> None:
    provider = make_user(db_session, settings, role="provider")
    for scope in ("user/Communication.rs?status=completed", "user/Communication.rs?category=a|b|c"):
        result = CliRunner().invoke(main, ["token", "--user", provider.username, "--scope", scope], env=cli_env)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stdout.count(".") < 2  # no token printed
    scope = f"user/Communication.rs?category={HL7}|notification"
    ok = CliRunner().invoke(main, ["token", "--user", provider.username, "--scope", scope], env=cli_env)
    assert ok.exit_code == 0, ok.output
    assert verify_access_token(ok.stdout.strip(), settings)["scope"] == scope
