"""Fixtures shared by the FHIR API tests: a practice, and its provider's and patient's headers."""

from __future__ import annotations

import pytest

from fhirserver.extensions import db
from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, make_practice, token_for


@pytest.fixture()
def practice(app, settings):
    with app.app_context():
        p = make_practice(db.session, settings)
        db.session.remove()
    return p


@pytest.fixture()
def provider_headers(app, settings, practice) -> dict[str, str]:
    return {"Authorization": "Bearer " + token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)}


@pytest.fixture()
def auth(provider_headers) -> dict[str, str]:
    """The provider's headers, by a shorter name."""
    return provider_headers


@pytest.fixture()
def patient_headers(app, settings, practice) -> dict[str, str]:
    tok = token_for(app, settings, practice.patient_user_id, PATIENT_SCOPE, patient=practice.patient_id)
    return {"Authorization": "Bearer " + tok}
