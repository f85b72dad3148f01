"""Sending one email through the SMTP server named by ``SMTP_URL``.

``smtp://user:pass@host:port`` (plain, or ``?starttls=1`` to upgrade), ``smtps://...`` for
implicit TLS; ``?timeout=`` in seconds (default 10). The URL is parsed once per call:
cheap next to an SMTP session, and it keeps this module free of state.
Errors are raised as they come; :func:`is_permanent` tells the caller whether a retry
can help.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TIMEOUT = 10.0
TRUE = {"1", "true", "yes", "on"}


class SmtpUrlError(ValueError):
    """SMTP_URL is malformed; the message never repeats the URL (it may hold a password)."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT


def parse_smtp_url(url: str) -> SmtpTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise SmtpUrlError("SMTP_URL must look like smtp://[user:pass@]host[:port] or smtps://...")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    implicit = parts.scheme == "smtps"
    try:
        port = parts.port or (465 if implicit else 25)
        timeout = float(query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError as exc:
        raise SmtpUrlError("SMTP_URL has a bad port or timeout") from exc
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        implicit_tls=implicit,
        starttls=not implicit and query.get("starttls", "").lower() in TRUE,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        timeout=timeout,
    )


def send(smtp_url: str, msg: EmailMessage, from_address: str, to_address: str) -> None:
    """Deliver ``msg`` to one recipient; returns once the server has accepted it."""
    target = parse_smtp_url(smtp_url)
    context = ssl.create_default_context() if (target.implicit_tls or target.starttls) else None
    client: smtplib.SMTP
    if target.implicit_tls:
        client = smtplib.SMTP_SSL(target.host, target.port, timeout=target.timeout, context=context)
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=target.timeout)
    with client:
        if target.starttls:
            client.starttls(context=context)
        if target.username:
            client.login(target.username, target.password)
        client.send_message(msg, from_addr=from_address, to_addrs=[to_address])


def is_permanent(exc: BaseException) -> bool:
    """True when the server gave a 5xx answer (or lacks a feature we need): retrying will not help.

    Network errors, timeouts and 4xx answers are transient.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return isinstance(exc, smtplib.SMTPNotSupportedError)
