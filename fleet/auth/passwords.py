"""Password hashing.

Users' passwords: Argon2id through pwdlib (`$argon2id$...`), as FastAPI's own docs do. Hashes
written before it, PBKDF2-SHA256 as `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`, still
verify, and `verify_and_update` gives their Argon2 replacement, stored at the next login.
Broker passwords: Mosquitto 2's own `$7$` form (PBKDF2-SHA512), which `mosquitto_passwd`
writes and the broker checks, so the exported password file needs no plain password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

LEGACY_PREFIX = "pbkdf2_sha256$"
MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default; the broker reads the count per entry
MOSQUITTO_SALT_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LegacyPbkdf2Hasher:
    """pwdlib hasher for the PBKDF2-SHA256 hashes written before Argon2: verifies them, and
    always asks for a rehash. It never makes new ones (`hash` is for the tests that check the
    upgrade)."""

    @classmethod
    def identify(cls, hash: str | bytes) -> bool:
        """Whether `hash` is a legacy PBKDF2 hash (`pbkdf2_sha256$...`)."""
        text = hash.decode("ascii", "replace") if isinstance(hash, bytes) else hash
        return text.startswith(LEGACY_PREFIX)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        """A legacy PBKDF2-SHA256 hash of `password` (600,000 iterations, a random 16-byte salt
        unless `salt` is given), for the tests of the upgrade only."""
        iterations = 600_000
        salt = salt or secrets.token_bytes(16)
        secret = password.encode() if isinstance(password, str) else password
        digest = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
        return f"{LEGACY_PREFIX}{iterations}${_b64(salt)}${_b64(digest)}"

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        """Whether `password` matches the legacy hash; a malformed hash, or one whose iteration
        count is outside 1 to 10,000,000, is no match."""
        text = hash.decode("ascii", "replace") if isinstance(hash, bytes) else hash
        secret = password.encode() if isinstance(password, str) else password
        try:
            _scheme, iterations, salt, digest = text.split("$")
            rounds = int(iterations)
            if not 1 <= rounds <= 10_000_000:
                return False  # a stored count this large would hold a login for minutes
            expected = base64.b64decode(digest)
            actual = hashlib.pbkdf2_hmac("sha256", secret, base64.b64decode(salt), rounds)
        except ValueError:
            return False
        return hmac.compare_digest(expected, actual)

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        """Always True: a legacy hash is replaced by an Argon2 one at the next login."""
        return True


def password_context(argon2: Argon2Hasher | None = None) -> PasswordHash:
    """The current hasher first (new hashes, rehash target), then the legacy one."""
    return PasswordHash((argon2 or Argon2Hasher(), LegacyPbkdf2Hasher()))


# Argon2id at pwdlib's defaults (time 3, memory 64 MiB, parallelism 4): RFC 9106's second
# recommended option. Tests swap in cheaper parameters (tests/fixtures_auth.py).
PASSWORDS = password_context()


def hash_password(password: str) -> str:
    """A new hash of the password, in the current scheme (Argon2id)."""
    return PASSWORDS.hash(password)


def verify_password(password: str, stored: str | None) -> bool:
    """Whether the password matches the stored hash (either scheme); False for no hash."""
    return verify_and_update(password, stored)[0]


def verify_and_update(password: str, stored: str | None) -> tuple[bool, str | None]:
    """(matches, the hash to store instead or None): a match of an old scheme, or of older
    parameters, gives its replacement. An unknown or broken hash is no match."""
    if not stored:
        return False, None
    try:
        return PASSWORDS.verify_and_update(password, stored)
    except Exception:  # pwdlib's UnknownHashError, or argon2's for a mangled hash
        return False, None


# A hash of a password nobody has, checked when the user does not exist (or cannot log in),
# so that a refusal costs the same work whoever was named.
_DECOY: str | None = None


def spend_as_a_check(password: str) -> None:
    """Do the work of checking a password, and discard the outcome."""
    global _DECOY
    if _DECOY is None:
        _DECOY = PASSWORDS.hash(secrets.token_urlsafe(16))
    PASSWORDS.verify(password, _DECOY)


def mosquitto_hash(password: str, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """`$7$<iterations>$<salt>$<hash>`: a Mosquitto 2 password-file entry (after `user:`)."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES)
    # Checked against entries written by mosquitto_passwd 2.0 (tests/test_mqtt_acl.py).
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_mosquitto_hash(password: str, stored: str) -> bool:
    """Whether `password` matches a Mosquitto 2 password-file entry (`$7$...`, after `user:`);
    False for an entry of another form."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(expected, actual)
