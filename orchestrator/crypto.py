"""Secrets at rest: the token columns of the state database, encrypted under one key.

The database holds every account's refresh token, and a refresh token is a year (or 180 days)
of posting rights; a copied ``state.db`` or a stray backup must not hand them out. When a key is
configured, the store passes each token through ``TokenCipher`` on its way in and out.

AES-256-GCM from ``cryptography`` (never hand-rolled): a random 96-bit nonce per value, and the
value's place (``"acme-us/refresh_token"``) as associated data, so a ciphertext copied to another
account or column fails to decrypt instead of silently posting as the wrong creator.

Stored form: ``"enc1:" + urlsafe_b64(nonce + ciphertext + tag)``. A value without the prefix is
plaintext written before encryption was turned on and is returned as is, so turning encryption on
needs no migration; the next write encrypts it. The ``1`` names the format so that a later one
can be told apart.

The key comes from a file (``tiktok.token_key_file``, mode 0600) or from a systemd credential
(``LoadCredential=``). Neither the key nor a token ever appears in an error message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigError, TokenError

PREFIX = "enc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# A key file is 64 hex characters or 44 base64 characters plus a newline; anything much larger
# is the wrong file, and is not read into memory whole.
_MAX_KEY_FILE = 4096
_FORMATS = "64 hex characters or 44 characters of urlsafe base64 (32 random bytes)"


class TokenCipher:
    """Encrypts and decrypts token values under one 256-bit key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a token key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return "TokenCipher(key=<hidden>)"

    @classmethod
    def from_file(cls, path: Path, *, field: str = "tiktok.token_key_file") -> TokenCipher:
        """Load the key from ``path``; refuse a file that group or others can read."""
        return cls(_read_key(Path(path), field=field, check_mode=True))

    @classmethod
    def from_credential(cls, name: str) -> TokenCipher:
        """Load the key from the systemd credential ``name`` (``$CREDENTIALS_DIRECTORY/name``)."""
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"$CREDENTIALS_DIRECTORY is not set, so credential {name!r} cannot be read; "
                f"run under systemd with LoadCredential={name}:/path/to/key"
            )
        if not name or name in {".", ".."} or "/" in name:
            raise ConfigError(f"credential name {name!r} must be a plain file name")
        # systemd guards the credentials directory itself (only the service's user may enter it)
        # and may grant that user access to the file with an ACL, whose mask shows up as group
        # bits in st_mode: the 0o077 check would refuse a correctly protected key.
        return cls(_read_key(Path(directory) / name, field=None, check_mode=False))

    def is_encrypted(self, stored: str) -> bool:
        return stored.startswith(PREFIX)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """Encrypt ``plaintext`` bound to ``context`` (e.g. ``"acme-us/refresh_token"``)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str, *, context: str) -> str:
        """The plaintext of ``stored``; a value without ``PREFIX`` is returned unchanged.

        Raises ``TokenError`` when the value does not open under this key and context. The
        message names the context, never the value.
        """
        if not stored.startswith(PREFIX):
            return stored
        try:
            blob = base64.b64decode(stored[len(PREFIX) :], altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TokenError(
                f"cannot decrypt {context}: the stored value is not valid {PREFIX} data; "
                "corrupted, or wrong token key?"
            ) from exc
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise TokenError(
                f"cannot decrypt {context}: the stored value is truncated; "
                "corrupted, or wrong token key?"
            )
        try:
            plain = self._aead.decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode("utf-8")
            )
        except InvalidTag as exc:
            raise TokenError(
                f"cannot decrypt {context}: wrong token key? "
                "(or the value was copied from another account or column)"
            ) from exc
        return plain.decode("utf-8")


def generate_key() -> str:
    """A new key as 64 hex characters, for ``orchestrator keygen``."""
    return secrets.token_bytes(KEY_BYTES).hex()


def _read_key(path: Path, *, field: str | None, check_mode: bool) -> bytes:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, file=str(path), field=field)

    try:
        # One open file for the mode check and the read, so both concern the same file.
        with path.open("rb") as f:
            if check_mode and os.name == "posix":
                mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                if mode & 0o077:
                    raise fail(
                        f"the token key file is readable by group or others (mode {mode:04o}); "
                        f"run `chmod 600 {path}`"
                    )
            raw = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError as exc:
        raise fail(
            "the token key file does not exist; create one with `orchestrator keygen`"
        ) from exc
    except PermissionError as exc:
        raise fail("cannot read the token key file: permission denied") from exc
    except OSError as exc:
        raise fail(f"cannot read the token key file: {exc.strerror or type(exc).__name__}") from exc
    key = _parse_key(raw)
    if key is None:
        raise fail(f"the token key file is malformed; expected {_FORMATS}")
    return key


def _parse_key(raw: bytes) -> bytes | None:
    """The 32 key bytes encoded in ``raw``, or None; never echoes what it was given."""
    if len(raw) > _MAX_KEY_FILE:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    if len(text) == 44:
        try:
            # Standard base64 (``openssl rand -base64 32``) is accepted too: the two alphabets
            # differ only in ``+/`` versus ``-_``, so nothing is ambiguous.
            key = base64.b64decode(text.replace("+", "-").replace("/", "_"), b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        return key if len(key) == KEY_BYTES else None
    return None
