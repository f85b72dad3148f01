"""Fixtures of the login-server tests (their plain helpers are in tests/auth/support.py; the
database, settings and app fixtures in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.auth.support import new_web_client


@pytest.fixture()
def web(app: Any) -> Any:
    """A test client of the app, from a made-up address of its own (see new_web_client)."""
    return new_web_client(app)
