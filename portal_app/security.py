"""Response headers every portal page carries: CSP, no-store, no referrer, no framing.

Pages show PHI, so nothing the portal serves may be cached by the browser or a proxy
(static files excepted), no URL may leak through a Referer header, and a strict
Content-Security-Policy without inline script limits what an injected tag could do.
"""

from __future__ import annotations

from flask import Flask, Response, request


def content_security_policy(base_url: str) -> str:
    return (
        "default-src 'self'; "
        "script-src 'self'; "
        "style-src 'self'; "
        "img-src 'self' data:; "
        "object-src 'none'; "
        "base-uri 'none'; "
        "frame-ancestors 'none'; "
        f"form-action 'self' {base_url.rstrip('/')}"
    )


def install_security_headers(app: Flask, base_url: str) -> None:
    csp = content_security_policy(base_url)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = csp
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response
