"""Basic auth for ``/system/*``, the faas-provider way.

Credentials come from two files, ``basic-auth-user`` and ``basic-auth-password``, in the secrets
folder (``secret_mount_path``), read once at start; surrounding whitespace is trimmed. A refused
request gets 401, ``WWW-Authenticate: Basic realm="Restricted"`` and ``invalid credentials``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path

USER_FILE = "basic-auth-user"
PASSWORD_FILE = "basic-auth-password"
REALM_HEADER = 'Basic realm="Restricted"'
REFUSAL_TEXT = "invalid credentials"


class CredentialsMissing(RuntimeError):
    """Basic auth is on but its files cannot be read; the provider must not start."""


@dataclass(frozen=True)
class BasicAuthCredentials:
    user: str
    password: str = ""

    def __repr__(self) -> str:  # never print the password
        return f"BasicAuthCredentials(user={self.user!r}, password='***')"


def read_basic_auth(secrets_dir: Path) -> BasicAuthCredentials:
    """Read the two credential files; CredentialsMissing names the file that is not there."""
    values = []
    for fname in (USER_FILE, PASSWORD_FILE):
        path = Path(secrets_dir) / fname
        try:
            values.append(path.read_text().strip())
        except OSError as e:
            raise CredentialsMissing(
                f"basic auth is on but {path} cannot be read ({e.strerror}); write it, or set "
                "basic_auth=false"
            ) from e
    if not values[0]:
        raise CredentialsMissing(f"{Path(secrets_dir) / USER_FILE} is empty")
    return BasicAuthCredentials(values[0], values[1])


def is_authorized(header: str | None, creds: BasicAuthCredentials) -> bool:
    """Whether an ``Authorization`` header carries exactly these credentials (constant time)."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    user_ok = hmac.compare_digest(user.encode(), creds.user.encode())
    password_ok = hmac.compare_digest(password.encode(), creds.password.encode())
    return user_ok and password_ok
