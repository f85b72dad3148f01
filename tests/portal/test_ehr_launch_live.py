"""The console's SMART apps on a patient's chart (A10) against the real API and auth server over
HTTP: the chart lists the apps registered for the EHR launch, and the Launch button (a POST
with CSRF) sends the browser to the app's launch URL with ``iss`` and ``launch``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

from smart_auth import clients
from tests.factories import make_practice
from tests.portal.test_portal_live import csrf, login
from tests.support import uid


@pytest.fixture(scope="module")
def clients_seeded(settings: Any) -> None:
    from fhirserver.db import make_sessionmaker
    from fhirserver.seed import seed_clients

    maker = make_sessionmaker(settings.database_url)
    with maker() as session:
        seed_clients(session, settings)
        session.commit()
    maker.kw["bind"].dispose()


def _register_app(db_session: Any) -> tuple[str, str]:
    client_id = f"chart-app-{uid()}"
    launch_url = f"https://{client_id}.example/smart/launch"
    clients.register_client(
        db_session,
        client_id=client_id,
        name=f"Chart app {client_id}",
        redirect_uris=[f"https://{client_id}.example/smart/callback"],
        scope="launch openid fhirUser patient/Patient.rs",
        launch_url=launch_url,
    )
    db_session.commit()
    return client_id, launch_url


def _launch_action(chart_html: str, client_id: str) -> str:
    match = re.search(
        r'<form method="post"[^>]*action="([^"]*/launch)"[^>]*>(?:(?!</form>).)*name="client_id" value="'
        + re.escape(client_id)
        + '"',
        chart_html,
        re.S,
    )
    assert match, "the chart must offer a POST Launch form for the app"
    return match.group(1)


def test_A10_the_chart_lists_the_apps_and_launch_redirects_with_iss_and_launch(
    live_server: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    practice = make_practice(db_session, settings)
    client_id, launch_url = _register_app(db_session)
    base = live_server.url
    s = login(base, "console", practice.provider_username, practice.password)
    chart = s.get(f"{base}/portal/console/patients/{practice.patient_id}", timeout=30)
    assert chart.status_code == 200
    assert f"Chart app {client_id}" in chart.text and ">Launch</button>" in chart.text
    # The form's redirect leaves for the app: the page's CSP must allow that origin.
    csp = chart.headers["Content-Security-Policy"]
    form_action = next(d for d in csp.split(";") if d.strip().startswith("form-action"))
    assert f"https://{client_id}.example" in form_action.split()
    action = urljoin(chart.url, _launch_action(chart.text, client_id))

    # Never a GET that writes, never a POST without the CSRF token.
    assert s.get(action, allow_redirects=False, timeout=30).status_code == 405
    r = s.post(action, data={"client_id": client_id}, allow_redirects=False, timeout=30)
    assert r.status_code == 400 and "Location" not in r.headers

    r = s.post(action, data={"csrf_token": csrf(chart.text), "client_id": client_id}, allow_redirects=False, timeout=30)
    assert r.status_code == 303
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == launch_url
    q = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert set(q) == {"iss", "launch"} and q["iss"] == settings.fhir_base
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["launch"])
    # A second click mints a new launch (each is single-use).
    r2 = s.post(
        action, data={"csrf_token": csrf(chart.text), "client_id": client_id}, allow_redirects=False, timeout=30
    )
    assert r2.status_code == 303 and parse_qs(urlsplit(r2.headers["Location"]).query)["launch"][0] != q["launch"]


def test_A10_the_console_cannot_launch_for_a_patient_outside_the_providers_care(
    live_server: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    mine = make_practice(db_session, settings)
    theirs = make_practice(db_session, settings)
    client_id, _ = _register_app(db_session)
    base = live_server.url
    s = login(base, "console", mine.provider_username, mine.password)
    chart = s.get(f"{base}/portal/console/patients/{mine.patient_id}", timeout=30)
    token = csrf(chart.text)
    for pid, app_id in ((theirs.patient_id, client_id), (mine.patient_id, f"nobody-{uid()}")):
        r = s.post(
            f"{base}/portal/console/patients/{pid}/launch",
            data={"csrf_token": token, "client_id": app_id},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 303, r.text[:300]
        assert urlsplit(r.headers["Location"]).path == f"/portal/console/patients/{pid}"
    page = s.get(f"{base}/portal/console/patients/{mine.patient_id}", timeout=30)
    assert "could not be launched" in page.text


def test_A10_without_registered_apps_the_chart_says_so(settings: Any) -> None:
    from flask import render_template

    from portal_app.app import create_portal_app
    from portal_app.config import PortalConfig

    config = PortalConfig(
        base_url=settings.base_url,
        secret_key=settings.secret_key,
        patient_client_secret="x",
        console_client_secret="x",
        session_url="filesystem:///tmp/unused-portal-sessions",
        dev_mode=True,
    )
    portal = create_portal_app(config)
    with portal.test_request_context("/console/patients/p1"):
        empty = render_template("console/_apps.html", apps=[], apps_error=None, patient={"id": "p1"})
        failed = render_template(
            "console/_apps.html",
            apps=[],
            apps_error="The list of apps cannot be shown right now.",
            patient={"id": "p1"},
        )
    assert "No SMART apps are registered" in empty and "<form" not in empty
    assert "cannot be shown" in failed and "No SMART apps" not in failed
