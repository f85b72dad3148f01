"""PKCE (RFC 7636) as SMART requires it: S256 only, and required from every client.

Authlib's ``CodeChallenge`` lets a request without a challenge through, supports
``plain`` and defaults to it; this subclass refuses all three (a confidential
client's secret is no substitute: a stolen code must be useless on its own).
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import CODE_CHALLENGE_PATTERN, CODE_VERIFIER_PATTERN

METHOD = "S256"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def matches(verifier: str, challenge: str) -> bool:
    return hmac.compare_digest(s256(verifier), challenge)


class S256CodeChallenge(CodeChallenge):
    DEFAULT_CODE_CHALLENGE_METHOD = METHOD
    SUPPORTED_CODE_CHALLENGE_METHOD = [METHOD]
    CODE_CHALLENGE_METHODS = {METHOD: matches}

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.datalist
        challenges = data.get("code_challenge", [])
        methods = data.get("code_challenge_method", [])
        if len(challenges) > 1 or len(methods) > 1:
            raise InvalidRequestError("Repeated PKCE parameters.")
        challenge = challenges[0] if challenges else None
        method = methods[0] if methods else None
        if not challenge:
            raise InvalidRequestError("Missing 'code_challenge' (PKCE S256 is required).")
        if method != METHOD:
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        if not CODE_CHALLENGE_PATTERN.match(challenge):
            raise InvalidRequestError("Invalid 'code_challenge'.")

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        verifier = grant.request.form.get("code_verifier")
        if not verifier:
            raise InvalidRequestError("Missing 'code_verifier'.")
        if not CODE_VERIFIER_PATTERN.match(verifier):
            raise InvalidGrantError("Invalid 'code_verifier'.")
        code = grant.request.authorization_code
        if code.code_challenge_method != METHOD or not code.code_challenge:
            raise InvalidGrantError("The code was not issued with an S256 challenge.")
        if not matches(verifier, code.code_challenge):
            raise InvalidGrantError("Code challenge failed.")
