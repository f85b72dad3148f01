"""Application factory of the API server: the FHIR REST API (/fhir) and SMART auth (/auth)."""

from __future__ import annotations

import logging

from flask import Flask, redirect

from fhirserver.config import Settings, load_settings
from fhirserver.db import configure_sqlite, engine_options
from fhirserver.extensions import db
from fhirserver.logging_setup import configure_logging


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging()
    app = Flask("fhirserver")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.extensions["fhirserver.settings"] = settings
    db.init_app(app)
    with app.app_context():
        configure_sqlite(db.engine)

    from fhirserver.web.blueprint import create_fhir_blueprint
    from notifier.dispatch import install as install_notifications
    from smart_auth.web import init_auth

    app.register_blueprint(create_fhir_blueprint(), url_prefix="/fhir")
    init_auth(app, settings)
    # Outbox rows written by the WebMail rules are handed to Celery after each commit.
    install_notifications(settings)

    @app.get("/")
    def index():  # type: ignore[no-untyped-def]
        return redirect("/portal/")

    logging.getLogger(__name__).info("app ready")
    return app


def get_settings(app: Flask) -> Settings:
    settings: Settings = app.extensions["fhirserver.settings"]
    return settings
