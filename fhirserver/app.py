"""Application factory of the API server: the FHIR REST API (/fhir) and SMART auth (/auth).

A composition root: it wires smart_auth's implementations into the interfaces of
``fhirserver.core.ports`` (the FHIR side never imports smart_auth itself).
"""

from __future__ import annotations

import logging

from flask import Flask, redirect
from werkzeug.middleware.proxy_fix import ProxyFix

from fhirserver import security_headers
from fhirserver.config import Settings, load_settings
from fhirserver.core import audit_batch, audit_chain
from fhirserver.core.ports import TokenAuthority, install_portal_accounts
from fhirserver.db import configure_engine, engine_options
from fhirserver.extensions import db
from fhirserver.logging_setup import configure_logging


def install_accounts() -> None:
    """Wire smart_auth's accounts into the FHIR core (every composition root calls this)."""
    from fhirserver.core.ports import install_mailbox_users
    from smart_auth import accounts, mailbox_users

    install_portal_accounts(accounts)
    install_mailbox_users(mailbox_users)


def create_app(settings: Settings | None = None, *, tokens: TokenAuthority | None = None) -> Flask:
    """The API app. ``tokens`` replaces the bearer-token check (the benchmark's baseline only)."""
    settings = settings or load_settings()
    configure_logging()
    app = Flask("fhirserver")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(
            settings.database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
        ),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.extensions["fhirserver.settings"] = settings
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    # The read path's audit batch writer seals the records it committed (fhirserver.core.audit_chain).
    audit_batch.set_after_commit(audit_chain.sealer(audit_chain.chain_key(settings.secret_key)))

    from fhirserver.web.blueprint import create_fhir_blueprint, install_fhir_error_pages
    from notifier.dispatch import install as install_notifications
    from smart_auth.cors_origins import RegisteredOrigins
    from smart_auth.resource_server import SmartTokenAuthority
    from smart_auth.web import init_auth

    install_accounts()
    with app.app_context():
        origins = RegisteredOrigins(settings, db.engine)  # the CORS allowlist of /fhir and /auth/token
    app.register_blueprint(create_fhir_blueprint(tokens or SmartTokenAuthority(settings), origins), url_prefix="/fhir")
    install_fhir_error_pages(app)
    init_auth(app, settings, origins=origins)
    if settings.trusted_proxy_hops:
        # The client address (login throttling, audit) and scheme as the trusted proxies saw them.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    # HSTS on every /auth and /fhir response in production (fhirserver.wsgi adds the portal).
    app.wsgi_app = security_headers.install(app.wsgi_app, settings)  # type: ignore[method-assign,assignment]
    # Outbox rows written by the WebMail rules are handed to Celery after each commit.
    install_notifications(settings)

    @app.get("/")
    def index():  # type: ignore[no-untyped-def]
        return redirect("/portal/")

    if not settings.mfa_required and not settings.dev_mode:
        # Only the demo practice turns two-step sign-in off; a production server that does says so.
        logging.getLogger(__name__).warning(
            "MFA_REQUIRED=0: providers and staff sign in with a password alone (two-step sign-in is off)"
        )
    if not settings.dev_mode and settings.base_url.startswith("http://"):
        # Production cookies are Secure (and __Host-): over plain http no browser sends them back.
        logging.getLogger(__name__).warning(
            "BASE_URL is http:// in production: browsers will not sign in (Secure cookies need https)"
        )
    logging.getLogger(__name__).info("app ready")
    return app


def get_settings(app: Flask) -> Settings:
    settings: Settings = app.extensions["fhirserver.settings"]
    return settings
