"""Communications at rest: AES-GCM with the key id beside the data, keys from configuration."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from fhirserver.core.crypto import KeyRing
from fhirserver.core.errors import FhirError
from fhirserver.core.repository import Repository
from fhirserver.models import ResourceRow
from tests.factories import make_practice, message_json


def test_envelope_is_bound_to_its_key_and_row() -> None:
    ring = KeyRing({"a": os.urandom(32), "b": os.urandom(32)}, "a")
    envelope, kid = ring.encrypt(b'{"resourceType":"Communication"}', "Communication", "m1", 1)
    assert kid == "a"
    assert ring.decrypt(envelope, "a", "Communication", "m1", 1) == b'{"resourceType":"Communication"}'
    for wrong in (("b", "m1", 1), ("a", "m2", 1), ("a", "m1", 2), ("missing", "m1", 1)):
        kid_, rid, vid = wrong
        with pytest.raises(FhirError):  # another key, or the envelope copied onto another row or version
            ring.decrypt(envelope, kid_, "Communication", rid, vid)
    tampered = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(FhirError):
        ring.decrypt(tampered, "a", "Communication", "m1", 1)


def test_rotation_new_key_encrypts_old_key_still_decrypts(db_session, settings) -> None:
    p = make_practice(db_session, settings)
    old_kid = settings.active_key_id
    before = Repository(db_session, settings, p.patient).create(
        "Communication", message_json(p.patient_ref, p.practitioner_ref, body="before rotation")
    )
    db_session.commit()

    rotated = settings.with_(
        encryption_keys={"k-new": os.urandom(32), **settings.encryption_keys}, active_key_id="k-new"
    )
    repo = Repository(db_session, rotated, p.patient)
    after = repo.create("Communication", message_json(p.patient_ref, p.practitioner_ref, body="after rotation"))
    db_session.commit()

    key_ids = dict(
        db_session.execute(
            select(ResourceRow.res_id, ResourceRow.key_id).where(ResourceRow.res_id.in_([before.res_id, after.res_id]))
        ).all()
    )
    assert key_ids == {before.res_id: old_kid, after.res_id: "k-new"}
    assert repo.read("Communication", before.res_id).json()["payload"][0]["contentString"] == "before rotation"
    assert repo.read("Communication", after.res_id).json()["payload"][0]["contentString"] == "after rotation"
    # A server that lost the new key cannot read what it encrypted, and says so without a traceback.
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, p.patient).read("Communication", after.res_id)
    assert exc.value.status == 500 and "key" in exc.value.diagnostics
