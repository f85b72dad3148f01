"""A plain read checks its token's grant inside its own query (``PendingGrant``).

The grant's state is still checked on every request; for ``GET [type]/[id]`` by a patient
or a provider the check is a column of the read's one statement instead of a statement of
its own. These tests pin both halves: the read issues one statement in the request's
thread, and every way a grant dies (revoked, account disabled, role changed) still gives
401 on a read, whatever else the read would have answered (a hit, a miss, a forbidden type,
an unacceptable format).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, update

from smart_auth.models import OAuthGrant, UserAccount
from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, Practice, token_for


def _bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def _gid(app: Any, token: str) -> str:
    from smart_auth.resource_server import SmartTokenAuthority

    with app.app_context():
        return str(SmartTokenAuthority(app.extensions["fhirserver.settings"]).claims(token)["gid"])


def _change(app: Any, stmt: Any) -> None:
    from fhirserver.extensions import db

    with app.app_context():
        db.session.execute(stmt)
        db.session.commit()
        db.session.remove()


@pytest.fixture()
def statements(app: Any) -> Iterator[list[tuple[str, bool]]]:
    """The SQL statements run in this thread (the request's; the audit writer has its own),
    each with whether its connection was in autocommit mode (no BEGIN, no COMMIT)."""
    from fhirserver.extensions import db

    seen: list[tuple[str, bool]] = []
    me = threading.get_ident()

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == me:
            dbapi = conn.connection.dbapi_connection
            seen.append((statement, bool(getattr(dbapi, "autocommit", False))))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.mark.parametrize("who", ["provider", "patient"])
def test_a_read_is_one_statement_that_also_checks_the_grant(
    app: Any, client: Any, settings: Any, practice: Practice, statements: list[tuple[str, bool]], who: str
) -> None:
    user, scope = (
        (practice.provider_user_id, PROVIDER_SCOPE) if who == "provider" else (practice.patient_user_id, PATIENT_SCOPE)
    )
    token = token_for(app, settings, user, scope)
    assert client.get(f"/fhir/{practice.patient_ref}", headers=_bearer(token)).status_code == 200  # warm
    statements.clear()
    r = client.get(f"/fhir/{practice.patient_ref}", headers=_bearer(token))
    assert r.status_code == 200
    assert len(statements) == 1, statements
    sql, autocommit = statements[0]
    assert sql.lstrip().upper().startswith("SELECT") and "oauth_grant" in sql and "resource" in sql
    # Not even BEGIN and COMMIT around it (fhirserver.db.without_transaction); SQLite's
    # connections are always in pysqlite's autocommit mode (configure_sqlite), so there only
    # the absence of its BEGIN IMMEDIATE above shows it.
    assert autocommit or settings.is_sqlite


def _kill(app: Any, how: str, token: str, user_id: str) -> None:
    if how == "revoked":
        _change(app, update(OAuthGrant).where(OAuthGrant.id == _gid(app, token)).values(revoked_at=datetime.now(UTC)))
    elif how == "disabled":
        _change(app, update(UserAccount).where(UserAccount.id == user_id).values(active=False))
    else:
        _change(app, update(UserAccount).where(UserAccount.id == user_id).values(role="staff"))


@pytest.mark.parametrize("how", ["revoked", "disabled", "role-changed"])
@pytest.mark.parametrize("who", ["provider", "patient"])
def test_a_dead_grant_is_401_on_every_kind_of_read(
    app: Any, client: Any, settings: Any, practice: Practice, who: str, how: str
) -> None:
    user, scope = (
        (practice.provider_user_id, PROVIDER_SCOPE) if who == "provider" else (practice.patient_user_id, PATIENT_SCOPE)
    )
    token = token_for(app, settings, user, scope)
    hit = f"/fhir/{practice.patient_ref}"
    assert client.get(hit, headers=_bearer(token)).status_code == 200
    _kill(app, how, token, user)
    reads = {
        "hit": (hit, {}),
        "miss": ("/fhir/Patient/no-such-patient", {}),
        "outside the grant": ("/fhir/Communication/no-such-message", {}),
        "forbidden type": ("/fhir/AuditEvent/some-event", {}),
        "bad Accept": (hit, {"Accept": "application/fhir+xml"}),
        "bad id": ("/fhir/Patient/" + "x" * 80, {}),
    }
    for what, (path, extra) in reads.items():
        r = client.get(path, headers=_bearer(token, **extra))
        assert r.status_code == 401, (what, r.status_code)
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"], what
        assert r.json["resourceType"] == "OperationOutcome"
