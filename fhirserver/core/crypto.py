"""AES-256-GCM encryption of stored resources, with the key id kept beside the data.

A Communication is stored as one envelope: ``nonce (12 bytes) || ciphertext+tag``,
with the key id in its own column and bound into the tag as associated data together
with the resource's type, id and version, so that an envelope copied onto another
row fails to decrypt. Keys come from configuration (``ENCRYPTION_KEYS``); the active
key encrypts, every configured key decrypts (rotation re-encrypts later).
"""

from __future__ import annotations

import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhirserver.core.errors import FhirError

NONCE_BYTES = 12


class KeyRing:
    def __init__(self, keys: dict[str, bytes], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise ValueError("the active key id is not among the configured keys")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active_key_id = active_key_id

    @staticmethod
    def _aad(res_type: str, res_id: str, version_id: int) -> bytes:
        return f"{res_type}/{res_id}/_history/{version_id}".encode()

    def encrypt(self, plaintext: bytes, res_type: str, res_id: str, version_id: int) -> tuple[bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        aead = self._keys[self.active_key_id]
        return nonce + aead.encrypt(nonce, plaintext, self._aad(res_type, res_id, version_id)), self.active_key_id

    def decrypt(self, envelope: bytes, key_id: str, res_type: str, res_id: str, version_id: int) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise FhirError(500, "exception", "A stored resource is encrypted under a key that is not configured")
        try:
            return aead.decrypt(envelope[:NONCE_BYTES], envelope[NONCE_BYTES:], self._aad(res_type, res_id, version_id))
        except InvalidTag as exc:
            raise FhirError(500, "exception", "A stored resource failed its integrity check") from exc


def derive_key(secret: str, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose, derived from the app secret (HKDF-SHA256); never a data key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret.encode())


def seal(data: bytes, key: bytes, purpose: bytes) -> bytes:
    """Encrypt a small token (search cursors, the pre-login cookie) with ``key``, bound to ``purpose``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, purpose)


def unseal(blob: bytes, key: bytes, purpose: bytes) -> bytes | None:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], purpose)
    except (InvalidTag, ValueError):
        return None


def keyring_for(keys: dict[str, bytes], active_key_id: str) -> KeyRing:
    """The KeyRing of these keys, built once per process (the AEAD objects are reusable and
    thread-safe): every request's repository needs one, and most never use it."""
    return _keyring(tuple(sorted(keys.items())), active_key_id)


@lru_cache(maxsize=8)
def _keyring(items: tuple[tuple[str, bytes], ...], active_key_id: str) -> KeyRing:
    return KeyRing(dict(items), active_key_id)
