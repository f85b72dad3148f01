"""A backend client's public keys (JWKS): checked at registration, fetched by URL, cached per process.

Registration gives either a JWKS URL (the client rotates its keys there) or the JWKS
itself, stored on the ``oauth_client`` row. Either way the set may hold only public RSA
and EC keys, each with a ``kid``: a private member (``d``, ``p``...) or a symmetric key is
refused, because a server that holds a client's private key could impersonate it.

A JWKS URL is fetched with a timeout, without following redirects, and read up to
:data:`MAX_BYTES`. The answer is kept per process for the ``max-age`` of its
``Cache-Control`` (at most a day; :data:`DEFAULT_MAX_AGE` without one; ``no-store`` or
``no-cache`` for no time at all), in a bounded LRU, so that a token request does not
fetch it every time and a client's new keys are seen once the old answer expires.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

MAX_KEYS = 20
MAX_BYTES = 64 * 1024
FETCH_TIMEOUT = 5.0
DEFAULT_MAX_AGE = 300
MAX_MAX_AGE = 86400
CACHE_SIZE = 256
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y")}
MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


class JwksError(ValueError):
    """A JWKS is malformed, holds a private or symmetric key, or cannot be fetched; a short reason."""


def check_jwks(doc: Any) -> dict[str, Any]:
    """The JWKS ``doc`` (a dict or its JSON text) if it holds only public RSA/EC keys with kids."""
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except ValueError:
            raise JwksError("the JWKS is not JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise JwksError("a JWKS needs a non-empty 'keys' array")
    if len(keys) > MAX_KEYS:
        raise JwksError(f"a JWKS may hold at most {MAX_KEYS} keys")
    kids: set[str] = set()
    for key in keys:
        if not isinstance(key, dict):
            raise JwksError("every JWKS entry must be a JSON object")
        if PRIVATE_MEMBERS & key.keys():
            raise JwksError("the JWKS holds a private or symmetric key: register public keys only")
        kty = key.get("kty")
        if kty not in PUBLIC_MEMBERS:
            raise JwksError("only RSA and EC keys are accepted")
        if not all(isinstance(key.get(m), str) and key[m] for m in PUBLIC_MEMBERS[kty]):
            raise JwksError(f"an {kty} key misses {', '.join(PUBLIC_MEMBERS[kty])}")
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise JwksError("every key needs a 'kid'")
        if kid in kids:
            raise JwksError("two keys share a 'kid'")
        kids.add(kid)
    return {"keys": keys}


def check_jwks_url(url: str) -> str:
    """An absolute https URL (http only on a loopback host), without user info or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        raise JwksError("the JWKS URL is not a valid URL") from None
    if not host or parts.fragment or "@" in parts.netloc or len(url) > 2000:
        raise JwksError("the JWKS URL must be an absolute URL without user info or fragment")
    loopback = host in ("localhost", "127.0.0.1", "::1")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback):
        return url
    raise JwksError("the JWKS URL must use https (http only on 127.0.0.1, [::1] or localhost)")


def max_age(cache_control: str | None) -> int:
    """Seconds an answer with this ``Cache-Control`` may be reused."""
    if not cache_control:
        return DEFAULT_MAX_AGE
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0
    match = MAX_AGE_RE.search(cache_control)
    return min(int(match.group(1)), MAX_MAX_AGE) if match else DEFAULT_MAX_AGE


def fetch(url: str) -> tuple[dict[str, Any], int]:
    """GET the JWKS at ``url``: (the checked JWKS, seconds it may be cached)."""
    try:
        with requests.get(
            url, timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
        ) as resp:
            if resp.status_code != 200:
                raise JwksError(f"the JWKS URL answered {resp.status_code}")
            body = b""
            for chunk in resp.iter_content(8192):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise JwksError("the JWKS is too large")
            seconds = max_age(resp.headers.get("Cache-Control"))
    except requests.RequestException:
        raise JwksError("the JWKS URL could not be fetched") from None
    return check_jwks(body), seconds


@dataclass
class _Entry:
    jwks: dict[str, Any]
    expires: float


class JwksCache:
    """Fetched JWKS per URL, kept for their ``max-age`` (thread-safe, bounded LRU)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0  # how many times a URL was fetched (the benchmark and tests read it)

    def get(self, url: str) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            entry = self._items.get(url)
            if entry is not None and entry.expires > now:
                self._items.move_to_end(url)
                return entry.jwks
        jwks, seconds = fetch(url)  # outside the lock: a slow URL must not stall other clients
        with self._lock:
            self.fetches += 1
            if seconds > 0:
                self._items[url] = _Entry(jwks, time.time() + seconds)
                self._items.move_to_end(url)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            else:
                self._items.pop(url, None)
        return jwks

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = JwksCache()


def keys_of(jwks_url: str | None, inline: str | None, cache: JwksCache = CACHE) -> list[dict[str, Any]]:
    """The public keys of a client: its inline JWKS, else the (cached) one at its URL."""
    if inline:
        return list(check_jwks(inline)["keys"])
    if jwks_url:
        return list(cache.get(jwks_url)["keys"])
    raise JwksError("the client has no registered keys")
