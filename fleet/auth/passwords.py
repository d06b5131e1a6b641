"""Password hashing, with the standard library only.

Users' passwords: PBKDF2-SHA256, `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`.
Broker passwords: Mosquitto 2's own `$7$` form (PBKDF2-SHA512), which `mosquitto_passwd`
writes and the broker checks, so the exported password file needs no plain password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

USER_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-SHA256
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default; the broker reads the count per entry
MOSQUITTO_SALT_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, iterations: int = USER_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


def mosquitto_hash(password: str, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """`$7$<iterations>$<salt>$<hash>`: a Mosquitto 2 password-file entry (after `user:`)."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES)
    # Checked against entries written by mosquitto_passwd 2.0 (tests/test_mqtt_acl.py).
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_mosquitto_hash(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(expected, actual)
