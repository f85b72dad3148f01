"""The baseline: a bare Flask endpoint that returns a stored resource's bytes from the same database.

No authentication, no authorization, no audit, no decryption: one primary-key SELECT
and the bytes. Served by gunicorn with the same settings as the real server, it is
the ceiling our FHIR read is compared with.
"""

from __future__ import annotations

import os

from flask import Flask, Response, abort
from sqlalchemy import select

from fhirserver.db import make_engine
from fhirserver.models import ResourceRow

engine = make_engine(os.environ["DATABASE_URL"])
app = Flask("bare")


@app.get("/bare/<res_type>/<res_id>")
def bare(res_type: str, res_id: str) -> Response:
    with engine.connect() as conn:
        content = conn.execute(
            select(ResourceRow.content).where(ResourceRow.res_type == res_type, ResourceRow.res_id == res_id)
        ).scalar_one_or_none()
    if content is None:
        abort(404)
    return Response(content, content_type="application/fhir+json")
