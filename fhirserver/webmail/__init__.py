"""Secure WebMail: the Communication profile, its rules, read state, outbox and operations."""
