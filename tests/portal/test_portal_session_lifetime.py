"""F4 in the portal: an absolute session lifetime beside the idle timeout, on a frozen clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import time_machine

from portal_app.config import PortalConfig
from tests.portal.test_portal_app import ROOT, get, make_app, sign_in

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def _signed_in(web: Any) -> bool:
    with web.session_transaction(base_url=ROOT) as sess:
        return bool(sess.get("realms"))


def test_F4_portal_session_ends_after_its_absolute_lifetime_however_active(tmp_path: Path) -> None:
    portal = make_app(f"filesystem://{tmp_path / 's'}", session_idle_minutes=60, session_absolute_hours=2)
    web = portal.test_client()
    with time_machine.travel(T0, tick=False):
        # Tokens that outlive the test, so that only the session's own lifetime can sign out.
        sign_in(web, "patient", {"role": "patient", "patient": "p1"}, expires_in=10 * 3600)
        with web.session_transaction(base_url=ROOT) as sess:
            portal.session_interface.regenerate(sess)  # what the OAuth callback does at sign-in
            assert sess["signed_in_at"] == T0.timestamp()
    for minutes in (40, 80, 119):  # active all along: never idle for an hour
        with time_machine.travel(T0 + timedelta(minutes=minutes), tick=False):
            get(web, "/")
            assert _signed_in(web), minutes
    with time_machine.travel(T0 + timedelta(minutes=121), tick=False):
        page = get(web, "/")
        assert page.status_code == 200 and "signed out" in page.get_data(as_text=True)
        assert not _signed_in(web)


def test_F4_a_second_sign_in_does_not_extend_the_absolute_lifetime(tmp_path: Path) -> None:
    portal = make_app(f"filesystem://{tmp_path / 's'}")
    web = portal.test_client()
    with time_machine.travel(T0, tick=False):
        sign_in(web, "patient", {"role": "patient", "patient": "p1"})
        with web.session_transaction(base_url=ROOT) as sess:
            portal.session_interface.regenerate(sess)
    with time_machine.travel(T0 + timedelta(minutes=10), tick=False):
        sign_in(web, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"})
        with web.session_transaction(base_url=ROOT) as sess:
            portal.session_interface.regenerate(sess)
            assert sess["signed_in_at"] == T0.timestamp()


def test_the_absolute_lifetime_comes_from_the_environment() -> None:
    env = {"SECRET_KEY": "k", "PORTAL_CLIENT_SECRET": "p", "CONSOLE_CLIENT_SECRET": "c"}
    assert PortalConfig.from_env(env).session_absolute_hours == 12
    assert PortalConfig.from_env({**env, "SESSION_ABSOLUTE_HOURS": "8"}).session_absolute_hours == 8
