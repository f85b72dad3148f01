"""Tables of accounts, OAuth clients and grants, browser sessions and login throttling.

They share the one database (and its Alembic history) with the FHIR store, so that
several app instances share sessions, throttle counters and refresh tokens.
Secrets are stored only as hashes: passwords (argon2id), client secrets, codes,
refresh tokens and session ids (SHA-256, since they are long random values).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhirserver.db import Base

ROLES = ("patient", "provider", "staff", "auditor", "admin")


class UserAccount(Base):
    __tablename__ = "user_account"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Stored lower-cased: usernames are not case-sensitive.
    username: Mapped[str] = mapped_column(String(150), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    # Patient/x for patients, Practitioner/y for providers; None for staff, auditor, admin.
    fhir_user: Mapped[str | None] = mapped_column(String(140), nullable=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    must_change_password: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StaffAssignment(Base):
    """A staff user works for these providers and sees their patients."""

    __tablename__ = "staff_assignment"
    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    practitioner_ref: Mapped[str] = mapped_column(String(140), primary_key=True)


class OAuthClient(Base):
    __tablename__ = "oauth_client"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    redirect_uris: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON list
    scope: Mapped[str] = mapped_column(Text, nullable=False, default="")  # the most it may ask for
    grant_types: Mapped[str] = mapped_column(Text, nullable=False, default='["authorization_code"]')
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40), nullable=False, default="client_secret_basic")
    # First-party clients (our portal and console) skip the consent page.
    first_party: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # A resource server may introspect any token (RFC 7662); other confidential clients only their own.
    resource_server: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # Backend services (private_key_jwt): the client's public keys, by URL or inline (a JWKS JSON).
    jwks_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    jwks: Mapped[str | None] = mapped_column(Text, nullable=True)
    # SMART apps that support the EHR launch: where the console sends the browser (smart_auth.launch).
    launch_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class OAuthGrant(Base):
    """One authorization of one client by one user: every token it produced carries its id.

    Access tokens name it (claim ``gid``) and refresh tokens belong to it; the API checks
    it on every request, so revoking it ends all of them at once (``smart_auth.grants``).
    """

    __tablename__ = "oauth_grant"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    client_id: Mapped[str] = mapped_column(String(100), nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    # offline_access: survives logout; otherwise the grant ends with the login (login_id).
    offline: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    login_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class AuthorizationCode(Base):
    __tablename__ = "oauth_code"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), nullable=False)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    redirect_uri: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    nonce: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code_challenge: Mapped[str] = mapped_column(String(128), nullable=False)
    code_challenge_method: Mapped[str] = mapped_column(String(10), nullable=False)
    launch_patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    auth_time: Mapped[int] = mapped_column(Integer, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The browser login that approved the code; the grant made at redemption keeps it.
    login_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set when the code is redeemed: a replayed code revokes this grant (RFC 6749 4.1.2).
    grant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Issued for an EHR launch (smart_auth.launch): the token response adds the banner and style.
    ehr_launch: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class RefreshToken(Base):
    __tablename__ = "oauth_refresh_token"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    client_id: Mapped[str] = mapped_column(String(100), nullable=False)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    launch_patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Consent(Base):
    """Scopes a user granted to a third-party client (first-party clients need none)."""

    __tablename__ = "oauth_consent"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class WebSession(Base):
    """A browser session of the login server, kept server-side; the cookie holds only its id."""

    __tablename__ = "web_session"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Stable for one sign-in across id regenerations: grants and id_tokens (``sid``) name it.
    login_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (Index("ix_web_session_last_seen", "last_seen_at"),)


class LoginThrottle(Base):
    """Failed-login counters (``smart_auth.throttle``); keys are hashed, never usernames or addresses."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # No attempt on this key before this instant (growing delays); None: not delayed.
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AssertionJti(Base):
    """A client assertion's ``jti``, kept until the assertion's ``exp`` (``smart_auth.assertion_replay``).

    The primary key makes the insert fail for a replay, in every process at once.
    """

    __tablename__ = "oauth_assertion_jti"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the jti
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class UserMfa(Base):
    """A user's confirmed TOTP authenticator (``smart_auth.mfa``); one per account.

    The base32 secret is stored only as an AES-256-GCM envelope under a configured key
    (``ENCRYPTION_KEYS``; ``key_id`` names it, so a key rotation can re-encrypt later), bound
    to the user id. ``last_step`` is the 30-second step of the last accepted code: a code of
    that step or an earlier one is refused, so each code works once.
    """

    __tablename__ = "user_mfa"
    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    secret_envelope: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    confirmed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class MfaRecoveryCode(Base):
    """A single-use recovery code, stored as SHA-256 of (user id, code): 79 random bits each."""

    __tablename__ = "mfa_recovery_code"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("user_account.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EhrLaunch(Base):
    """A SMART EHR launch id (``smart_auth.launch``): stored as its SHA-256, like a code.

    It names the user, the sign-in (``login_id``), the app and the patient whose chart was
    open; it lives a few minutes and is consumed (``used_at``) by the one authorization
    that it starts.
    """

    __tablename__ = "oauth_launch"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    login_id: Mapped[str] = mapped_column(String(64), nullable=False)
    client_id: Mapped[str] = mapped_column(String(100), nullable=False)
    patient_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
