"""SMART discovery: the document served at /.well-known/smart-configuration.

It advertises only what really works: the standalone launch with public and
symmetric confidential clients, PKCE S256, refresh tokens for offline and online
access, token revocation (RFC 7009) and introspection (RFC 7662), patient and user
scopes in v1 and v2 syntax, authorize by POST, and OpenID Connect id_tokens for
``openid fhirUser`` (hence ``issuer`` and ``sso-openid-connect``; the OpenID provider
metadata is at ``{issuer}/.well-known/openid-configuration``), and SMART Backend Services
(``client_credentials`` with ``private_key_jwt`` signed RS384 or ES384, hence
``client-confidential-asymmetric``; ``smart_auth.backend_services``), and the EHR launch
from the provider console with a patient in context, a banner and a style (``smart_auth.launch``).
"""

from __future__ import annotations

from typing import Any

from fhirserver.config import Settings
from smart_auth.backend_services import ALGORITHMS as ASSERTION_ALGORITHMS
from smart_auth.introspection import SmartIntrospectionEndpoint
from smart_auth.oauth_server import TOKEN_AUTH_METHODS
from smart_auth.revocation import SmartRevocationEndpoint
from smart_auth.tokens import ALG, issuer

CAPABILITIES = [
    "launch-standalone",
    "launch-ehr",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "context-banner",
    "context-style",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "authorize-post",
    "sso-openid-connect",
]

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/Patient.rs",
    "patient/Practitioner.rs",
    "patient/Communication.cruds",
    "user/*.rs",
    "user/Patient.cruds",
    "user/Practitioner.rs",
    "user/Communication.cruds",
    "user/AuditEvent.rs",
    "system/*.rs",
    "system/Patient.cruds",
    "system/Practitioner.cruds",
    "system/Communication.cruds",
]


def _authorization_server(settings: Settings) -> dict[str, Any]:
    """What both documents say alike: the issuer, its endpoints, and the grants and client
    authentication it accepts (one list, so that the two documents never disagree)."""
    base = settings.base_url.rstrip("/")
    return {
        "issuer": issuer(settings),
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "revocation_endpoint": f"{base}/auth/revoke",
        "introspection_endpoint": f"{base}/auth/introspect",
        "jwks_uri": f"{base}/auth/jwks",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": list(SmartRevocationEndpoint.CLIENT_AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(SmartIntrospectionEndpoint.CLIENT_AUTH_METHODS),
    }


def smart_configuration(settings: Settings) -> dict[str, Any]:
    return {
        **_authorization_server(settings),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(settings: Settings) -> dict[str, Any]:
    """OpenID provider metadata (only what the SMART ``openid fhirUser`` flow uses)."""
    return {
        **_authorization_server(settings),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "auth_time", "fhirUser"],
    }
