"""The ServerApp's signatures: derived from its HPKE key, carried in server_key.pub, bound to
stage, run, round, fingerprint, setup and recipient; every bad signature is one SignatureError."""

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem  # noqa: F401 - the suite below needs it

from shared.crypto.sealing import (
    PQ_HYBRID,
    X25519,
    SealContext,
    SealError,
    ServerPrivateKey,
    load_private_key,
    load_public_key,
    open_update,
    save_private_key,
    save_public_key,
    seal_update,
)
from shared.crypto.signing import SignatureError, Statement, record_digest, sign, verify

STATEMENT = Statement("share-keys", 7, 3, "ab" * 32, b"s" * 32, b"c" * 32)


@pytest.fixture(scope="module")
def key():
    return ServerPrivateKey.generate()


def test_the_signing_key_is_derived_from_the_private_key_and_rides_in_the_public_file(key, tmp_path):
    save_private_key(key, tmp_path / "server.key")
    save_public_key(key.public_key, tmp_path / "server_key.pub")
    lines = (tmp_path / "server_key.pub").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["loraxs-hpke-public-key", "loraxs-signing-public-key"]
    again = load_private_key(tmp_path / "server.key")  # the same key file gives the same signing key
    assert again.public_key.signing == key.public_key.signing and len(key.public_key.signing) == 32
    assert load_public_key(tmp_path / "server_key.pub") == key.public_key
    assert ServerPrivateKey.generate().public_key.signing != key.public_key.signing
    (tmp_path / "old.pub").write_text(lines[0] + "\n")  # a file from before: still loads, no signing key
    old = load_public_key(tmp_path / "old.pub")
    assert old.raw == key.public_key.raw and old.signing is None
    for bad in (
        lines[0] + "\nloraxs-signing-public-key ed25519 zz\n",
        lines[0] + "\nsomething else\n",
        "\n".join(lines + lines) + "\n",
        lines[0] + "\nloraxs-signing-public-key ed25519 " + "00" * 31 + "\n",
    ):
        (tmp_path / "bad.pub").write_text(bad)
        with pytest.raises(SealError):
            load_public_key(tmp_path / "bad.pub")


def test_a_signature_verifies_only_for_its_own_statement(key):
    signature = sign(key.signing_key, STATEMENT)
    verify(key.public_key.signing, signature, STATEMENT)
    changes = [
        dict(stage="unmask"),
        dict(run_id=8),
        dict(server_round=4),
        dict(fingerprint="cd" * 32),
        dict(setup_digest=b"t" * 32),
        dict(content_digest=b"d" * 32),
        dict(recipient=5),
    ]
    for change in changes:
        other = Statement(**{**STATEMENT.__dict__, **change})
        with pytest.raises(SignatureError, match="bad server signature"):
            verify(key.public_key.signing, signature, other)
    with pytest.raises(SignatureError, match="bad server signature"):
        verify(ServerPrivateKey.generate().public_key.signing, signature, STATEMENT)
    for junk in (None, b"", b"x" * 63, "text", 3, b"\0" * 64):
        with pytest.raises(SignatureError):
            verify(key.public_key.signing, junk, STATEMENT)
    with pytest.raises(SignatureError, match="knows no server signing key"):
        verify(None, signature, STATEMENT)


def test_record_digest_is_canonical_and_typed():
    record = {"b": [b"\x01", b"\x02"], "a": 3, "c": 8.0, "d": "x", "e": True}
    assert record_digest(record) == record_digest(dict(reversed(list(record.items()))))
    for change in ({"a": 4}, {"a": "3"}, {"c": 8}, {"e": 1}, {"b": [b"\x01"]}, {"f": 0}):
        assert record_digest({**record, **change}) != record_digest(record)
    assert record_digest({"ab": "c"}) != record_digest({"a": "bc"})
    with pytest.raises(SignatureError):
        record_digest({"x": object()})


def test_stage_replies_are_sealed_with_the_stage_in_the_info(key):
    context = SealContext(7, 3, 11, "ab" * 32, "masked")
    sealed = seal_update(b"payload", key.public_key, context)
    assert open_update(sealed, key, context) == b"payload"
    for other in ("unmask", ""):
        with pytest.raises(SealError):
            open_update(sealed, key, SealContext(7, 3, 11, "ab" * 32, other))
    assert SealContext(7, 3, 11, "ab" * 32).encode().startswith(b"loraxs-seal/v1")  # train updates unchanged


def test_the_post_quantum_suite_uses_aes_256_gcm():
    key = ServerPrivateKey.generate(PQ_HYBRID)
    context = SealContext(1, 1, 1, "f")
    sealed = seal_update(b"x" * 100, key.public_key, context)
    aes256 = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    aes128 = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    assert aes256.decrypt(sealed, key._key, info=context.encode()) == b"x" * 100
    with pytest.raises(Exception):  # noqa: B017 - whatever cryptography raises on a failed open
        aes128.decrypt(sealed, key._key, info=context.encode())
    assert ServerPrivateKey.generate(X25519).public_key.signing is not None
