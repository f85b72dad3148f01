"""Flask extensions, created once and bound to each app in its factory."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy

from fhirserver.db import Base

# Our models are plain SQLAlchemy (the FHIR core knows no Flask); Flask-SQLAlchemy only
# supplies the per-request session and engine, over the same metadata.
db = SQLAlchemy(metadata=Base.metadata, session_options={"expire_on_commit": False})
