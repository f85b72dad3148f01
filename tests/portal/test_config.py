"""PortalConfig: built from the same environment variables as the API server."""

from __future__ import annotations

import pytest

from portal_app.config import PortalConfig


def test_from_env_reads_the_shared_variables() -> None:
    config = PortalConfig.from_env(
        {
            "BASE_URL": "https://clinic.example/",
            "SECRET_KEY": "k",
            "PORTAL_CLIENT_SECRET": "p",
            "CONSOLE_CLIENT_SECRET": "c",
            "PORTAL_SESSION_URL": "redis://127.0.0.1:6379/3",
            "SESSION_IDLE_MINUTES": "10",
            "FHIRSERVER_ENV": "production",
            "PORTAL_INTERNAL_BASE_URL": "http://10.0.0.2:8080",
        }
    )
    assert config.base_url == "https://clinic.example"
    assert config.fhir_aud == "https://clinic.example/fhir"
    assert config.api_base == "http://10.0.0.2:8080"
    assert config.session_idle_minutes == 10
    assert not config.dev_mode
    assert (config.patient_client_id, config.console_client_id) == ("portal", "console")


def test_from_env_names_what_is_missing_without_values() -> None:
    with pytest.raises(ValueError, match="PORTAL_CLIENT_SECRET") as info:
        PortalConfig.from_env({"SECRET_KEY": "topsecret", "CONSOLE_CLIENT_SECRET": "c"})
    assert "topsecret" not in str(info.value)


def test_config_is_frozen() -> None:
    config = PortalConfig("http://h", "k", "p", "c", "filesystem:///tmp/x")
    with pytest.raises(AttributeError):
        config.base_url = "http://other"  # type: ignore[misc]
    assert config.api_base == "http://h"


def test_portal_imports_nothing_from_the_server_packages() -> None:
    """The portal is a SMART app like any other: HTTP only, no shortcut into storage or auth."""
    import ast
    from pathlib import Path

    import portal_app

    forbidden = {"fhirserver", "smart_auth", "notifier"}
    for path in Path(portal_app.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
