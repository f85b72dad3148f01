"""SMART's own Python client (``fhirclient`` 4.4, from PyPI) against the real HTTP server: a
standalone launch by a patient and an EHR launch from the provider console, each ending with
a FHIR read made by fhirclient itself.

fhirclient finds the OAuth endpoints only in ``/metadata`` (the oauth-uris security
extension), so both flows also show that the CapabilityStatement publishes them. The
browser (login with TOTP for the provider, consent, the console's Launch button) is played
with ``requests``; in the EHR launch the console mints the launch through ``/auth/launch``
with the provider's own token, and the app receives ``iss`` and ``launch`` on its launch URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from fhirclient import client as fhir_client
from fhirclient.models.patient import Patient

from smart_auth import clients
from tests.auth.support import make_client, query_of
from tests.factories import make_practice
from tests.portal.test_portal_live import csrf
from tests.portal.test_portal_live import login as portal_login
from tests.support import uid

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
APP_SCOPE = "openid fhirUser patient/Patient.rs"  # fhirclient adds launch or launch/patient


@pytest.fixture(scope="module")
def clients_seeded(settings: Any) -> None:
    """Our own portal and console clients, as the live server's portal expects them."""
    from fhirserver.db import make_sessionmaker
    from fhirserver.seed import seed_clients

    maker = make_sessionmaker(settings.database_url)
    with maker() as session:
        seed_clients(session, settings)
        session.commit()
    maker.kw["bind"].dispose()


def _follow(browser: requests.Session, base: str, response: requests.Response, stop_prefix: str) -> str:
    """Follow redirects by hand until one leaves the server for ``stop_prefix``."""
    while response.status_code in (301, 302, 303, 307):
        location = urljoin(base + "/", response.headers["Location"])
        if location.startswith(stop_prefix):
            return location
        response = browser.get(location, allow_redirects=False, timeout=30)
    raise AssertionError(f"stopped at {response.status_code} {response.url}: {response.text[:300]}")


def _approve(browser: requests.Session, base: str, response: requests.Response, stop_prefix: str) -> str:
    """From the authorize request to the app's callback: follow, approve the consent page once."""
    while response.status_code in (301, 302, 303, 307):
        location = urljoin(base + "/", response.headers["Location"])
        if location.startswith(stop_prefix):
            return location
        response = browser.get(location, allow_redirects=False, timeout=30)
    assert response.status_code == 200 and "/auth/authorize/consent" in response.url, response.text[:300]
    scopes = re.findall(r'name="scope" id="[^"]+" value="([^"]+)"', response.text)
    r = browser.post(
        response.url,
        data={"csrf_token": csrf(response.text), "scope": scopes, "action": "approve"},
        allow_redirects=False,
        timeout=30,
    )
    return _follow(browser, base, r, stop_prefix)


def test_metadata_publishes_the_oauth_uris_extension_fhirclient_needs(live_server, settings) -> None:
    cs = requests.get(f"{live_server.url}/fhir/metadata", timeout=30).json()
    exts = {e["url"]: e for rest in cs["rest"] for e in rest["security"].get("extension", [])}
    uris = {e["url"]: e.get("valueUri") for e in exts[OAUTH_URIS]["extension"]}
    assert uris["authorize"] == f"{settings.base_url}/auth/authorize"
    assert uris["token"] == f"{settings.base_url}/auth/token"


def test_fhirclient_standalone_launch_by_a_patient_reads_their_record(live_server, db_session, settings) -> None:
    practice = make_practice(db_session, settings)
    app = make_client(db_session, first_party=False, confidential=False, scope="launch/patient " + APP_SCOPE)
    base = live_server.url
    smart = fhir_client.FHIRClient(
        settings={
            "app_id": app.client_id,
            "api_base": settings.fhir_base,
            "redirect_uri": app.redirect_uri,
            "scope": APP_SCOPE,
            "launch_patient": True,  # standalone: fhirclient asks for launch/patient
        }
    )
    authorize_url = smart.authorize_url  # fhirclient reads /metadata for it
    assert authorize_url.startswith(f"{settings.base_url}/auth/authorize?")
    q = query_of(authorize_url)
    assert "launch" not in q and "launch/patient" in q["scope"].split() and q["code_challenge_method"] == "S256"

    browser = requests.Session()
    r = browser.get(authorize_url, allow_redirects=False, timeout=30)
    login_page = browser.get(urljoin(base, r.headers["Location"]), timeout=30)
    r = browser.post(
        f"{base}/auth/login",
        data={
            "csrf_token": csrf(login_page.text),
            "username": practice.patient_username,
            "password": practice.password,
        },
        allow_redirects=False,
        timeout=30,
    )
    callback = _approve(browser, base, r, app.redirect_uri)
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == practice.patient_id
    assert "need_patient_banner" not in smart.launch_context  # only EHR launches
    patient = Patient.read(practice.patient_id, smart.server)
    assert patient.id == practice.patient_id


def test_fhirclient_ehr_launch_from_the_console_reads_the_charts_patient(
    live_server, db_session, settings, clients_seeded
) -> None:
    practice = make_practice(db_session, settings)
    client_id = f"fhirclient-{uid()}"
    launch_url = f"https://{client_id}.example/launch"
    redirect_uri = f"https://{client_id}.example/callback"
    clients.register_client(
        db_session,
        client_id=client_id,
        name=f"Growth chart {client_id}",
        redirect_uris=[redirect_uri],
        scope="launch " + APP_SCOPE,
        launch_url=launch_url,
    )
    db_session.commit()
    base = live_server.url

    # The provider signs in to the console (password and TOTP) and opens the patient's chart.
    browser = portal_login(base, "console", practice.provider_username, practice.password)
    chart = browser.get(f"{base}/portal/console/patients/{practice.patient_id}", timeout=30)
    assert chart.status_code == 200 and f"Growth chart {client_id}" in chart.text
    form = re.search(
        r'<form[^>]*action="([^"]*/launch)"[^>]*>(?:(?!</form>).)*value="' + re.escape(client_id) + '"',
        chart.text,
        re.S,
    )
    assert form, "the chart must offer a Launch form for the app"
    r = browser.post(
        urljoin(chart.url, form.group(1)),
        data={"csrf_token": csrf(chart.text), "client_id": client_id},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 303 and r.headers["Location"].startswith(launch_url + "?"), r.headers.get("Location")
    launched = query_of(r.headers["Location"])
    assert launched["iss"] == settings.fhir_base and launched["launch"]

    # The app: fhirclient with the launch it was given, in the same browser.
    smart = fhir_client.FHIRClient(
        settings={
            "app_id": client_id,
            "api_base": launched["iss"],
            "redirect_uri": redirect_uri,
            "scope": APP_SCOPE,
            "launch_token": launched["launch"],
        }
    )
    q = query_of(smart.authorize_url)
    assert q["launch"] == launched["launch"] and "launch" in q["scope"].split() and q["aud"] == settings.fhir_base
    r = browser.get(smart.authorize_url, allow_redirects=False, timeout=30)
    callback = _approve(browser, base, r, redirect_uri)  # signed in already: consent, then the code
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == practice.patient_id  # no picker: the chart's patient
    assert smart.launch_context["need_patient_banner"] is True
    style = requests.get(smart.launch_context["smart_style_url"], timeout=30)
    assert style.status_code == 200 and "color_background" in style.json()
    patient = Patient.read(practice.patient_id, smart.server)
    assert patient.id == practice.patient_id

    # The launch was used: the same id again gives the app an error, never a code.
    again = fhir_client.FHIRClient(
        settings={
            "app_id": client_id,
            "api_base": launched["iss"],
            "redirect_uri": redirect_uri,
            "scope": APP_SCOPE,
            "launch_token": launched["launch"],
        }
    )
    r = browser.get(again.authorize_url, allow_redirects=False, timeout=30)
    refused = query_of(_follow(browser, base, r, redirect_uri))
    assert refused.get("error") == "invalid_request" and "code" not in refused
