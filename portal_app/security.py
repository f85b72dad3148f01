"""Response headers every portal page carries: CSP, no-store, no referrer, no framing.

Pages show PHI, so nothing the portal serves may be cached by the browser or a proxy
(static files excepted), no URL may leak through a Referer header, and a strict
Content-Security-Policy without inline script limits what an injected tag could do.
"""

from __future__ import annotations

from flask import Flask, Response, g, request


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
        # A page whose forms end in a redirect elsewhere (the console's app launch) names the
        # origins; browsers apply form-action to those redirects too.
        extra = getattr(g, "form_action_extra", None)
        response.headers["Content-Security-Policy"] = csp + "".join(f" {o}" for o in extra or ())
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response
