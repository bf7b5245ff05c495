"""Pseudonyms for user ids in anything written for training (keyed HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from stream.errors import LamstreamError


class Pseudonymizer:
    """user id -> stable pseudonym under one secret key; without the key it cannot be
    reversed or recomputed (unlike a plain hash, which anyone can compute for a guessed id).

    `key_id` is derived from the key so records say which key made them: after a rotation,
    pseudonyms change, and the trainer sees the old and new key ids side by side.
    """

    def __init__(self, key: SecretStr | None) -> None:
        secret = key.get_secret_value().encode() if key is not None else b""
        if len(secret) < 16:
            raise LamstreamError("LAMSTREAM_PSEUDONYM_KEY must be set to a secret of at least "
                                 "16 characters for feedback records (e.g. `openssl rand -hex "
                                 "32`)")
        self._key = secret
        self.key_id = hmac.new(secret, b"lamstream key id", hashlib.sha256).hexdigest()[:8]

    def user_key(self, user_id: str) -> str:
        return hmac.new(self._key, b"user\x00" + user_id.encode(),
                        hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(key_id={self.key_id})"
