"""Logins, failed logins, code exchange and token use leave no username, password, code or token
in the logs (and no username in the audit trail)."""

from __future__ import annotations

import logging

from sqlalchemy import select

from fhirserver.extensions import db
from fhirserver.models import AuditLogRow
from tests.auth.support import (
    PASSWORD,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    new_web_client,
)


def test_no_username_password_code_or_token_in_logs(app, settings, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with app.app_context():
        user = make_user(db.session, settings, prefix="zzlogname")
        client = make_client(db.session)
        username = user.username
        before = {r for r in db.session.execute(select(AuditLogRow.event_id)).scalars()}
    web = new_web_client(app)
    assert login(web, username, "wrong password zzsecret").status_code == 400
    code, verifier = get_code(web, settings, client, username, "launch/patient patient/Patient.rs")
    tokens = exchange(web, client, code, verifier).get_json()
    access = tokens["access_token"]
    assert web.get("/fhir/Patient", headers={"Authorization": f"Bearer {access}"}).status_code == 200

    logged = caplog.text
    for secret in (username, PASSWORD, "zzsecret", code, verifier, access, access[-32:]):
        assert secret not in logged
    with app.app_context():
        events = (
            db.session.execute(select(AuditLogRow.content).where(AuditLogRow.event_id.notin_(before))).scalars().all()
        )
    assert len(events) >= 3  # the failed login, the login, the token, the search
    trail = b"\n".join(events)
    for secret in (username, PASSWORD, "zzsecret", code, access):
        assert secret.encode() not in trail
