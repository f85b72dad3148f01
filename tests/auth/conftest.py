"""Fixtures of the login-server tests live in tests/auth/support.py and tests/conftest.py."""
