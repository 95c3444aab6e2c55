"""Token encryption at rest: round trips, binding to context, key files, and no leaks."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.crypto import PREFIX, TokenCipher, generate_key
from orchestrator.errors import ConfigError, TokenError

KEY = bytes(range(32))
TOKEN = "rft.secret-refresh-token-value"
CTX = "acme-us/refresh_token"
FIELD = "tiktok.token_key_file"


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher(KEY)


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@given(plaintext=st.text(), context=st.text())
def test_round_trip(plaintext: str, context: str) -> None:
    cipher = TokenCipher(KEY)
    stored = cipher.encrypt(plaintext, context=context)
    assert stored.startswith(PREFIX)
    assert cipher.is_encrypted(stored)
    assert cipher.decrypt(stored, context=context) == plaintext


def test_stored_form_is_prefix_and_urlsafe_base64(cipher: TokenCipher) -> None:
    stored = cipher.encrypt(TOKEN, context=CTX)
    blob = base64.urlsafe_b64decode(stored.removeprefix(PREFIX))
    assert len(blob) == 12 + len(TOKEN.encode()) + 16
    assert TOKEN not in stored


def test_two_encryptions_differ(cipher: TokenCipher) -> None:
    first, second = cipher.encrypt(TOKEN, context=CTX), cipher.encrypt(TOKEN, context=CTX)
    assert first != second
    assert cipher.decrypt(first, context=CTX) == cipher.decrypt(second, context=CTX) == TOKEN


@pytest.mark.parametrize(
    "other", ["acme-eu/refresh_token", "acme-us/access_token", "", "acme-us/refresh_token "]
)
def test_another_context_fails(cipher: TokenCipher, other: str) -> None:
    stored = cipher.encrypt(TOKEN, context=CTX)
    with pytest.raises(TokenError, match="wrong token key") as info:
        cipher.decrypt(stored, context=other)
    assert TOKEN not in str(info.value)
    assert stored not in str(info.value)


def test_another_key_fails(cipher: TokenCipher) -> None:
    stored = cipher.encrypt(TOKEN, context=CTX)
    with pytest.raises(TokenError, match=r"cannot decrypt .*wrong token key\?"):
        TokenCipher(secrets.token_bytes(32)).decrypt(stored, context=CTX)


def test_tampering_fails(cipher: TokenCipher) -> None:
    stored = cipher.encrypt(TOKEN, context=CTX)
    blob = bytearray(base64.urlsafe_b64decode(stored.removeprefix(PREFIX)))
    for i in (0, 12, len(blob) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        tampered = PREFIX + base64.urlsafe_b64encode(bytes(flipped)).decode()
        with pytest.raises(TokenError, match="cannot decrypt"):
            cipher.decrypt(tampered, context=CTX)


@pytest.mark.parametrize(
    "garbage",
    [PREFIX, PREFIX + "!!!not base64!!!", PREFIX + "QUJD", PREFIX + "x" * 5, PREFIX + TOKEN],
)
def test_garbage_fails_without_echoing(cipher: TokenCipher, garbage: str) -> None:
    with pytest.raises(TokenError, match="wrong token key") as info:
        cipher.decrypt(garbage, context=CTX)
    message = str(info.value)
    assert CTX in message
    if len(garbage) > len(PREFIX):
        assert garbage.removeprefix(PREFIX) not in message


@pytest.mark.parametrize("plain", [TOKEN, "", "act.abc", "enc1", "ENC1:x"])
def test_plaintext_passes_through(cipher: TokenCipher, plain: str) -> None:
    assert not cipher.is_encrypted(plain)
    assert cipher.decrypt(plain, context=CTX) == plain


def test_errors_never_contain_the_plaintext(cipher: TokenCipher) -> None:
    stored = cipher.encrypt(TOKEN, context=CTX)
    with pytest.raises(TokenError) as info:
        TokenCipher(bytes(32)).decrypt(stored, context=CTX)
    for text in (str(info.value), repr(info.value), repr(info.value.__cause__)):
        assert TOKEN not in text
        assert stored not in text


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenCipher(b"k" * length)


def test_repr_hides_the_key() -> None:
    key = b"\xab" * 32
    text = repr(TokenCipher(key)) + str(TokenCipher(key))
    for form in (key.hex(), base64.urlsafe_b64encode(key).decode(), str(key), repr(key)):
        assert form not in text
    assert "hidden" in text


def test_generate_key() -> None:
    key = generate_key()
    assert len(key) == 64
    assert key == key.lower()
    assert len(bytes.fromhex(key)) == 32
    assert generate_key() != key


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k.hex(),
        lambda k: k.hex().upper(),
        lambda k: f"  {k.hex()}\n\n",
        lambda k: base64.urlsafe_b64encode(k).decode() + "\n",
        lambda k: base64.b64encode(k).decode(),
    ],
    ids=["hex", "HEX", "hex-whitespace", "urlsafe-base64", "standard-base64"],
)
def test_key_file_formats(tmp_path: Path, encode: Callable[[bytes], str]) -> None:
    key = b"\xfb\xff" + secrets.token_bytes(30)  # bytes that differ between the base64 alphabets
    path = write_key(tmp_path / "key", encode(key))
    stored = TokenCipher(key).encrypt(TOKEN, context=CTX)
    assert TokenCipher.from_file(path).decrypt(stored, context=CTX) == TOKEN


def test_generated_key_loads(tmp_path: Path) -> None:
    path = write_key(tmp_path / "key", generate_key() + "\n")
    cipher = TokenCipher.from_file(path)
    assert cipher.decrypt(cipher.encrypt(TOKEN, context=CTX), context=CTX) == TOKEN


def assert_config_error(
    info: pytest.ExceptionInfo[ConfigError], path: Path, *secrets_: str
) -> None:
    error = info.value
    assert error.file == str(path)
    assert error.field == FIELD
    assert str(path) in str(error)
    assert FIELD in str(error)
    for secret in secrets_:
        assert secret not in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        KEY.hex()[:-2],  # 31 bytes
        KEY.hex() + "00",  # 33 bytes
        "zz" + KEY.hex()[2:],  # 64 chars, not hex
        base64.urlsafe_b64encode(KEY[:-1]).decode(),  # 31 bytes of base64
        base64.urlsafe_b64encode(KEY).decode()[:-1] + "!",
        "key = " + KEY.hex(),
        KEY.hex()[:32] + " " + KEY.hex()[32:],
    ],
)
def test_malformed_key_file(tmp_path: Path, text: str) -> None:
    path = write_key(tmp_path / "key", text)
    with pytest.raises(ConfigError, match="malformed") as info:
        TokenCipher.from_file(path)
    assert_config_error(info, path, *(part for part in text.split() if len(part) >= 8))


def test_binary_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY)  # the raw 32 bytes, not encoded
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="malformed") as info:
        TokenCipher.from_file(path)
    assert_config_error(info, path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_group_or_world_readable_key_file_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "key", KEY.hex(), mode)
    with pytest.raises(ConfigError, match=r"readable by group or others.*chmod 600") as info:
        TokenCipher.from_file(path)
    assert_config_error(info, path, KEY.hex())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_key_file_accepted(tmp_path: Path, mode: int) -> None:
    TokenCipher.from_file(write_key(tmp_path / "key", KEY.hex(), mode))


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "key"
    with pytest.raises(ConfigError, match="does not exist") as info:
        TokenCipher.from_file(path)
    assert_config_error(info, path)


def test_key_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        TokenCipher.from_file(tmp_path)
    assert_config_error(info, tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_key_file(tmp_path: Path) -> None:
    path = write_key(tmp_path / "key", KEY.hex(), 0o000)
    with pytest.raises(ConfigError, match="permission denied") as info:
        TokenCipher.from_file(path)
    assert_config_error(info, path, KEY.hex())


def test_field_is_named_as_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        TokenCipher.from_file(tmp_path / "missing", field="daemon.key_file")
    assert info.value.field == "daemon.key_file"


def test_from_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd may expose the credential with group bits set (its ACL mask): not refused.
    write_key(tmp_path / "token-key", KEY.hex() + "\n", 0o440)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    stored = TokenCipher(KEY).encrypt(TOKEN, context=CTX)
    assert TokenCipher.from_credential("token-key").decrypt(stored, context=CTX) == TOKEN


def test_from_credential_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY is not set.*'token-key'"):
        TokenCipher.from_credential("token-key")


def test_from_credential_missing_or_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist") as info:
        TokenCipher.from_credential("token-key")
    assert info.value.file == str(tmp_path / "token-key")
    write_key(tmp_path / "token-key", "short")
    with pytest.raises(ConfigError, match="malformed"):
        TokenCipher.from_credential("token-key")


@pytest.mark.parametrize("name", ["", ".", "..", "../etc/key", "a/b"])
def test_from_credential_name_is_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match="plain file name"):
        TokenCipher.from_credential(name)
