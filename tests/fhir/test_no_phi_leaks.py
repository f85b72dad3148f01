"""A PHI sentinel in a message body never reaches the raw database, the logs or error messages."""

from __future__ import annotations

import json
import logging

from sqlalchemy import text

from fhirserver.extensions import db
from fhirserver.logging_setup import StripQueryStrings
from tests.factories import message_json
from tests.fhir.test_api import FHIR
from tests.support import uid


def _all_bytes(session) -> bytes:
    """Every table's every row, as bytes: what someone with a copy of the database would see."""
    out = []
    for table in db.metadata.sorted_tables:
        for row in session.execute(text(f'SELECT * FROM "{table.name}"')):
            for value in row:
                if isinstance(value, (bytes, memoryview)):
                    out.append(bytes(value))
                elif value is not None:
                    out.append(str(value).encode())
    return b"\n".join(out)


def test_body_sentinel_absent_from_database_and_logs(app, client, practice, patient_headers, provider_headers, caplog):
    sentinel = f"ZZPHI{uid()}"
    caplog.set_level(logging.DEBUG)
    msg = message_json(
        practice.patient_ref, practice.practitioner_ref, topic=f"Subj {sentinel}", body=f"Body {sentinel}"
    )
    resp = client.post("/fhir/Communication", data=json.dumps(msg), headers={**patient_headers, "Content-Type": FHIR})
    assert resp.status_code == 201
    cid = resp.get_json(force=True)["id"]
    got = client.get(f"/fhir/Communication/{cid}", headers=provider_headers)
    assert sentinel in got.get_data(as_text=True)
    # A failing request that echoes nothing back either.
    bad = dict(msg, sender={"reference": "Patient/someone-else"})
    resp = client.post("/fhir/Communication", data=json.dumps(bad), headers={**patient_headers, "Content-Type": FHIR})
    assert resp.status_code == 403 and sentinel not in resp.get_data(as_text=True)
    with app.app_context():
        assert sentinel.encode() not in _all_bytes(db.session)
        assert sentinel.lower().encode() not in _all_bytes(db.session).lower()
    assert sentinel not in caplog.text


def test_query_strings_are_stripped_from_log_lines():
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '127.0.0.1 - - "GET /fhir/Patient?name=Smith&birthdate=1980 HTTP/1.1" 200 -',
        None,
        None,
    )
    StripQueryStrings().filter(record)
    assert "Smith" not in record.getMessage() and "/fhir/Patient?[redacted]" in record.getMessage()
