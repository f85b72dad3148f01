"""Break-glass from the provider console, over HTTP against the real API (checklist C12).

The form is POSTed with its CSRF token; on a match the console redirects (303) to the
patient's chart, whose URL holds the patient id only, and the chart shows until when the
access lasts. The identifier, birth date and reason never appear in a URL.
"""

from __future__ import annotations

from typing import Any

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from tests.factories import make_practice, patient_json
from tests.portal.test_portal_live import clients_seeded as clients_seeded
from tests.portal.test_portal_live import login, post_form
from tests.portal.test_portal_live import practice as practice
from tests.support import uid

MRN = "urn:oid:2.16.840.1.113883.4.1.99"
REASON = "Brought in unconscious, ZZREASON allergies needed"


def _outsider(db_session: Any, settings: Any) -> tuple[str, str]:
    """A patient of another practice, with an MRN: (patient id, MRN)."""
    other = make_practice(db_session, settings)
    mrn = f"MRN-{uid()}"
    body = patient_json([other.practitioner_ref], family=f"ZZOut{uid()}", identifier=[{"system": MRN, "value": mrn}])
    pid = Repository(db_session, settings, system_principal("tests")).create("Patient", body).res_id
    db_session.commit()
    return pid, mrn


def test_C12_console_break_glass_form_opens_the_chart(
    live_server: Any, practice: Any, db_session: Any, settings: Any, clients_seeded: None
) -> None:
    base = live_server.url
    pid, mrn = _outsider(db_session, settings)
    provider = login(base, "console", practice.provider_username, practice.password)
    assert provider.get(base + f"/portal/console/patients/{pid}", timeout=30).status_code == 404

    page = provider.get(base + "/portal/console/break-glass", timeout=30)
    assert page.status_code == 200 and "Break-glass access" in page.text
    assert 'href="/portal/console/break-glass"' in provider.get(base + "/portal/console/", timeout=30).text
    fields = {"identifier_system": MRN, "identifier_value": mrn, "birth_date": "1980-04-02", "reason": REASON}

    # Without the CSRF token nothing happens.
    forged = provider.post(base + "/portal/console/break-glass", data=fields, timeout=30, allow_redirects=False)
    assert forged.status_code == 400
    # A wrong birth date: the same "no match" as an unknown identifier, and no access.
    for wrong in ({"birth_date": "1980-04-03"}, {"identifier_value": f"MRN-{uid()}"}):
        miss = post_form(provider, base + "/portal/console/break-glass", page.text, **{**fields, **wrong})
        assert miss.status_code == 422 and "No patient matches this identifier and birth date." in miss.text
    assert provider.get(base + f"/portal/console/patients/{pid}", timeout=30).status_code == 404
    # The reason is required.
    short = post_form(provider, base + "/portal/console/break-glass", page.text, **{**fields, "reason": "urgent"})
    assert short.status_code == 422

    done = post_form(provider, base + "/portal/console/break-glass", page.text, **fields)
    assert done.status_code == 303, done.text[:500]
    assert done.headers["Location"] == f"/portal/console/patients/{pid}"
    for secret in (mrn, "ZZREASON", "1980-04-02"):
        assert secret not in done.headers["Location"]
    chart = provider.get(base + done.headers["Location"], timeout=30)
    assert chart.status_code == 200
    assert "Break-glass access until" in chart.text and " UTC." in chart.text
    # The banner is shown once; the chart stays open while the grant lasts.
    again = provider.get(base + done.headers["Location"], timeout=30)
    assert again.status_code == 200 and "Break-glass access until" not in again.text
