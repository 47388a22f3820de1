"""The server's signature on push notifications (A2A: a JWT, its keys at a JWKS URL).

Each notification carries a short-lived ES256 JWT naming the receiver (``aud``), the task,
a unique ``jti`` (the notification's outbox key: the same across retries, so a receiver
can drop duplicates) and the SHA-256 of the exact body bytes. Receivers verify it with the
public key published at ``/.well-known/jwks.json``. The key comes from
``PUSH__SIGNING_KEY_FILE`` or is generated at start-up (then it changes on every restart,
and replicas differ: give replicas one key file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES256"
# How long a notification's JWT is valid (seconds); a retry signs afresh.
TOKEN_LIFETIME_SECONDS = 300


def load_signing_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The PEM EC P-256 private key in ``path``; ValueError saying what is wrong."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path} must hold an EC P-256 (prime256v1) key for ES256")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class PushSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey, *, issuer: str) -> None:
        self._key = key
        self.issuer = issuer
        public: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        # RFC 7638 thumbprint: a key id that names the key itself.
        required = {name: public[name] for name in ("crv", "kty", "x", "y")}
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
        self.kid = _b64(hashlib.sha256(canonical).digest())
        self._jwk = {**public, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    @classmethod
    def from_settings(cls, key_file: str | None, *, issuer: str) -> PushSigner:
        key = load_signing_key(key_file) if key_file else ec.generate_private_key(ec.SECP256R1())
        return cls(key, issuer=issuer)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def sign(
        self, body: bytes, *, audience: str, jti: str, task_id: str | None, now: float | None = None
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME_SECONDS,
            "jti": jti,
            "request_body_sha256": hashlib.sha256(body).hexdigest(),
        }
        if task_id is not None:
            claims["taskId"] = task_id
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})
