"""Personal adapter files encrypted at rest: round trips, "authentication failed", bounded scrypt."""

import os
import stat
import time

import pytest

from shared.crypto import at_rest
from shared.crypto.at_rest import (
    AUTH_FAILED,
    AtRestError,
    KeySource,
    decrypt_bytes,
    encrypt_bytes,
    is_encrypted,
    key_from_file,
    passphrase_key,
    write_encrypted,
)
from tests.helpers import make_key_file

PLAIN = b"safetensors header and tensors" * 100
FAST = 10  # scrypt N = 2^10 keeps the tests fast; files default to 2^17
SCRYPT_HEADER = 6 + 2 + 3 + 16 + 2 + 12  # magic, version, kdf, scrypt N r p, salt, empty label, nonce


def _auth_fails(blob, source, where=""):
    with pytest.raises(AtRestError) as err:
        decrypt_bytes(blob, source, where)
    assert str(err.value) == (f"{where}: {AUTH_FAILED}" if where else AUTH_FAILED)


def test_passphrase_round_trip_and_wrong_passphrase():
    source = passphrase_key("correct horse", log2_n=FAST)
    blob = encrypt_bytes(PLAIN, source)
    assert is_encrypted(blob) and not is_encrypted(PLAIN)
    assert len(blob) == len(PLAIN) + SCRYPT_HEADER + 16  # 57 B overhead (+ the kind and name, when given)
    assert decrypt_bytes(blob, passphrase_key("correct horse")) == PLAIN  # cost read from the header
    _auth_fails(blob, passphrase_key("correct horsE", log2_n=FAST))
    _auth_fails(blob, passphrase_key("wrong", log2_n=FAST), where="adapter.safetensors.enc")


def test_default_cost_round_trip():
    blob = encrypt_bytes(b"x", passphrase_key("pw"))
    assert blob[8:11] == bytes([17, 8, 1])
    assert decrypt_bytes(blob, passphrase_key("pw")) == b"x"


def test_key_file_round_trip(tmp_path):
    source = make_key_file(tmp_path / "adapter.key")  # 64 hex characters
    blob = encrypt_bytes(PLAIN, key_from_file(tmp_path / "adapter.key"))
    assert len(blob) == len(PLAIN) + 6 + 2 + 2 + 12 + 16  # 38 B overhead
    assert decrypt_bytes(blob, source) == PLAIN
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex() + "\n")  # openssl rand -hex 32 > other.key
    other.chmod(0o600)
    _auth_fails(blob, key_from_file(other))
    with pytest.raises(AtRestError, match="passphrase was given"):
        decrypt_bytes(blob, passphrase_key("pw", log2_n=FAST))


@pytest.mark.parametrize(
    "content",
    [b"not a key", os.urandom(32), b"hunter2-is-a-31-char-password!!\n", b"ab" * 31 + b"\n", b"zz" * 32, b"ab " * 32],
)
def test_a_key_file_is_64_hex_characters_and_nothing_else(tmp_path, content):
    """A password or 32 raw bytes would be used as the AES key with no derivation: refused."""
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(AtRestError, match="64 hex characters"):
        key_from_file(path)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    make_key_file(tmp_path / "adapter.key")
    for mode in (0o644, 0o640, 0o604, 0o660):
        (tmp_path / "adapter.key").chmod(mode)
        with pytest.raises(AtRestError, match="accessible by others: chmod 600"):
            key_from_file(tmp_path / "adapter.key")
    (tmp_path / "adapter.key").chmod(0o400)
    assert len(key_from_file(tmp_path / "adapter.key").key) == 32


def test_kind_and_name_are_authenticated(tmp_path):
    source = make_key_file(tmp_path / "adapter.key")
    blob = encrypt_bytes(PLAIN, source, kind="loraxs-adapter/personal", name="mine.safetensors")
    assert at_rest.header_kind(blob) == "loraxs-adapter/personal"
    assert decrypt_bytes(blob, source, kind="loraxs-adapter/personal", name="mine.safetensors") == PLAIN
    with pytest.raises(AtRestError, match="holds a loraxs-adapter/personal, not a loraxs-adapter/global"):
        decrypt_bytes(blob, source, kind="loraxs-adapter/global")
    with pytest.raises(AtRestError, match="was encrypted as 'mine.safetensors': renamed or swapped"):
        decrypt_bytes(blob, source, name="yours.safetensors")
    # the label is in the authenticated header: rewriting it (same length) fails authentication
    forged = blob.replace(b"personal", b"globalxx")
    _auth_fails(forged, source)
    path = tmp_path / "renamed.safetensors"
    write_encrypted(tmp_path / "mine.safetensors", PLAIN, source, kind="k")
    os.rename(tmp_path / "mine.safetensors", path)
    with pytest.raises(AtRestError, match="renamed or swapped"):
        decrypt_bytes(path.read_bytes(), source, str(path), name=path.name)


def test_version_1_files_are_still_read(capsys):
    """Written before the label existed: magic | 1 | kdf 2 | nonce || AES-256-GCM (header as AAD)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce = bytes(range(32)), bytes(12)
    header = b"LXSENC" + bytes([1, 2]) + nonce
    blob = header + AESGCM(key).encrypt(nonce, PLAIN, header)
    assert decrypt_bytes(blob, KeySource(key=key), "old", name="old") == PLAIN
    assert "older version" in capsys.readouterr().err


def test_every_flipped_byte_fails_authentication():
    source = passphrase_key("pw", log2_n=FAST)
    blob = encrypt_bytes(PLAIN, source)
    # salt, nonce, body and tag; the scrypt parameters too (changed cost -> other key)
    for pos in [8, 9, 10, 11, 20, 27, 30, SCRYPT_HEADER, len(blob) // 2, len(blob) - 1]:
        flipped = bytearray(blob)
        flipped[pos] ^= 0x01
        with pytest.raises(AtRestError) as err:
            decrypt_bytes(bytes(flipped), source)
        assert str(err.value) == AUTH_FAILED or "scrypt parameters" in str(err.value)
    for size in (SCRYPT_HEADER, SCRYPT_HEADER + 15, len(blob) - 1):
        _auth_fails(blob[:size], source)


def test_malicious_header_rejected_before_scrypt():
    source = passphrase_key("pw", log2_n=FAST)
    blob = bytearray(encrypt_bytes(PLAIN, source))
    for log2_n, r, p in [(40, 8, 1), (20, 8, 1), (18, 255, 1), (14, 8, 255), (0, 8, 1), (14, 0, 1)]:
        blob[8:11] = bytes([log2_n, r, p])
        start = time.perf_counter()
        with pytest.raises(AtRestError, match="outside the allowed bounds"):
            decrypt_bytes(bytes(blob), source)
        assert time.perf_counter() - start < 0.5
    with pytest.raises(AtRestError, match="outside the allowed bounds"):
        KeySource(passphrase=b"pw", log2_n=22)


def test_junk_inputs_raise_one_error():
    source = passphrase_key("pw", log2_n=FAST)
    for junk in [b"", b"LXSENC", b"LXSENC\x02\x01", b"LXSENC\x01\x09" + bytes(40), PLAIN, "LXSENC", None]:
        with pytest.raises(AtRestError):
            decrypt_bytes(junk, source)
    for bad in [dict(), dict(passphrase=b"a", key=bytes(32)), dict(key=b"short"), dict(passphrase=b"")]:
        with pytest.raises(AtRestError):
            KeySource(**bad)


def test_files_env_and_prompt(tmp_path, monkeypatch):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(PLAIN)
    assert not is_encrypted(path)
    source = passphrase_key("pw", log2_n=FAST)
    write_encrypted(path, PLAIN, source)
    assert is_encrypted(path) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert decrypt_bytes(path.read_bytes(), source, str(path)) == PLAIN
    before = path.read_bytes()
    with pytest.raises(AtRestError, match=AUTH_FAILED):
        decrypt_bytes(path.read_bytes(), passphrase_key("nope", log2_n=FAST), str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
    with pytest.raises(AtRestError, match="cannot"):
        is_encrypted(tmp_path / "missing")

    monkeypatch.delenv(at_rest.PASSPHRASE_ENV, raising=False)
    assert at_rest.passphrase_from_env() is None
    monkeypatch.setenv(at_rest.PASSPHRASE_ENV, "pw")
    assert at_rest.passphrase_from_env().passphrase == b"pw"
    answers = iter(["one", "two"])
    with pytest.raises(AtRestError, match="do not match"):
        at_rest.passphrase_from_prompt(confirm=True, ask=lambda prompt: next(answers))
    assert at_rest.passphrase_from_prompt(confirm=False, ask=lambda prompt: "pw").passphrase == b"pw"
    assert "pw" not in repr(source)
