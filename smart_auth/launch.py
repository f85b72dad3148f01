"""SMART EHR launch ids (table ``oauth_launch``): opaque, hashed, bound, short-lived, single use.

In an EHR launch the EHR (our provider console) sends the browser to the app's launch URL
with ``iss`` (the FHIR base) and ``launch`` (an opaque id); the app sends ``launch`` back in
its authorization request with the ``launch`` scope, and the authorization server turns it
into the launch context (the patient whose chart was open). Like an authorization code the
id travels in URLs (and so in browser history and possibly Referer headers), hence the
same defences (checklist A10):

- 256 random bits (``secrets.token_urlsafe``); only the SHA-256 is stored, so the table
  cannot be replayed as ids;
- bound to the user who minted it, the sign-in (``login_id``) it was minted in, the app
  (client) it was minted for, and the patient: the authorize endpoint accepts it only for
  that client and that signed-in user in that same sign-in;
- it lives :data:`LAUNCH_LIFETIME_SECONDS` and is consumed by the authorization it starts:
  claiming is a single conditional UPDATE, so two concurrent uses cannot both succeed.

Who may mint a launch for which patient is the launch API's policy
(``smart_auth.launch_views``); this module only stores and checks launches.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import EhrLaunch, WebSession

LAUNCH_LIFETIME_SECONDS = 300
MAX_LAUNCH_LENGTH = 128


@dataclass(frozen=True)
class NewLaunch:
    user_id: str
    login_id: str
    client_id: str
    patient_id: str


def new_value() -> str:
    """A fresh launch id: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def create(session: Session, new: NewLaunch) -> str:
    """Store a launch and return its id (which exists only in the answer to the console)."""
    value = new_value()
    now = utcnow()
    session.add(
        EhrLaunch(
            id_hash=sha256_hex(value),
            user_id=new.user_id,
            login_id=new.login_id,
            client_id=new.client_id,
            patient_id=new.patient_id,
            created_at=now,
            expires_at=now + timedelta(seconds=LAUNCH_LIFETIME_SECONDS),
            used_at=None,
        )
    )
    session.flush()
    return value


def find_live(session: Session, value: object, client_id: str) -> EhrLaunch | None:
    """The launch ``value`` names if it exists, is unused, unexpired and was minted for ``client_id``."""
    if not isinstance(value, str) or not value or len(value) > MAX_LAUNCH_LENGTH:
        return None
    row = session.execute(select(EhrLaunch).where(EhrLaunch.id_hash == sha256_hex(value))).scalar_one_or_none()
    if row is None or row.client_id != client_id or row.used_at is not None:
        return None
    if as_utc(row.expires_at) <= utcnow():
        return None
    return row


def belongs_to(row: EhrLaunch, user_id: str, login_id: object) -> bool:
    """True when the signed-in user and their sign-in are the ones the launch was minted in."""
    return row.user_id == user_id and isinstance(login_id, str) and row.login_id == login_id


def claim(session: Session, row: EhrLaunch) -> bool:
    """Consume the launch; False when it was used meanwhile or has just expired."""
    now = utcnow()
    result = session.execute(
        update(EhrLaunch)
        .where(EhrLaunch.id_hash == row.id_hash, EhrLaunch.used_at.is_(None), EhrLaunch.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)  # SQLite's naive datetimes vs an aware ``now``
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def purge(session: Session) -> int:
    """Delete expired launches (used or not: an expired id is refused either way)."""
    result = session.execute(delete(EhrLaunch).where(EhrLaunch.expires_at < utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def login_is_live(session: Session, settings: Settings, login_id: str | None) -> bool:
    """Whether a browser session of this sign-in still stands (``smart_auth.sessions`` limits).

    A launch is bound to the sign-in; minting one for a sign-in that has already ended
    would give an id that no browser can use, so the launch API refuses it and the console
    signs its user in again instead.
    """
    if not login_id:
        return False
    now = utcnow()
    return bool(
        session.execute(
            select(
                exists().where(
                    WebSession.login_id == login_id,
                    WebSession.last_seen_at >= now - timedelta(minutes=settings.session_idle_minutes),
                    WebSession.created_at >= now - timedelta(hours=settings.session_absolute_hours),
                )
            )
        ).scalar()
    )


def launch_url(app_launch_url: str, iss: str, launch: str) -> str:
    """The app's launch URL with ``iss`` and ``launch`` added to its query (any other kept)."""
    parts = urlsplit(app_launch_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("iss", "launch")]
    query += [("iss", iss), ("launch", launch)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# SMART App Launch "Styling": what an app may use to look at home in the console. Apps fetch
# it with the URL of the token response (``smart_style_url``); it holds no secret.
SMART_STYLE = {
    "color_background": "#ffffff",
    "color_error": "#b00020",
    "color_highlight": "#1f5fa8",
    "color_modal_backdrop": "rgba(0, 0, 0, 0.5)",
    "color_success": "#2e7d32",
    "color_text": "#1a1a1a",
    "dim_border_radius": "4px",
    "dim_font_size": "16px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
}
STYLE_PATH = "/auth/smart-style.json"


def style_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + STYLE_PATH


def token_response_context(settings: Settings) -> dict[str, object]:
    """What the token response of an EHR launch adds (A14): the console opens the app in the
    whole window, without its own patient banner, so the app must show one."""
    return {"need_patient_banner": True, "smart_style_url": style_url(settings)}
