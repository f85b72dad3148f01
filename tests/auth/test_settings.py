"""The security settings of this issue, from the environment: a bad value stops the process
with a message that names the variable and never its value."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from fhirserver.config import SettingsError, load_settings


def _base(tmp_path: Path) -> dict[str, str]:
    return {"VAR_DIR": str(tmp_path), "DATABASE_URL": "sqlite:///x.db"}


def test_throttle_and_proxy_settings(tmp_path: Path) -> None:
    cfg = load_settings(_base(tmp_path))
    assert (cfg.trusted_proxy_hops, cfg.login_max_failures_account, cfg.login_max_failures_address) == (0, 20, 20)
    cfg = load_settings(
        {
            **_base(tmp_path),
            "TRUSTED_PROXY_HOPS": "2",
            "LOGIN_MAX_FAILURES_ACCOUNT": "50",
            "LOGIN_WINDOW_SECONDS": "600",
        }
    )
    assert (cfg.trusted_proxy_hops, cfg.login_max_failures_account, cfg.login_window_seconds) == (2, 50, 600)
    for bad in (
        {"TRUSTED_PROXY_HOPS": "-1"},
        {"TRUSTED_PROXY_HOPS": "9"},
        {"LOGIN_MAX_FAILURES_ACCOUNT": "1"},
        {"LOGIN_WINDOW_SECONDS": "5"},
        {"TRUSTED_PROXY_HOPS": "one"},
    ):
        name = next(iter(bad))
        with pytest.raises(SettingsError, match=name):
            load_settings({**_base(tmp_path), **bad})


def test_portal_session_key(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    assert load_settings({**_base(tmp_path), "PORTAL_SESSION_ENCRYPTION_KEY": key}).portal_session_key == key
    for bad in ("short", base64.b64encode(os.urandom(16)).decode(), "%%%%"):
        with pytest.raises(SettingsError, match="PORTAL_SESSION_ENCRYPTION_KEY") as exc:
            load_settings({**_base(tmp_path), "PORTAL_SESSION_ENCRYPTION_KEY": bad})
        assert bad not in str(exc.value)
