"""Updates sealed to the server: round trip, overhead, every rejection is one SealError."""

import os
import random
import stat

import pytest

from shared.crypto.sealing import (
    OVERHEAD,
    PQ_HYBRID,
    X25519,
    SealContext,
    SealError,
    ServerPrivateKey,
    ServerPublicKey,
    load_private_key,
    load_public_key,
    open_update,
    save_private_key,
    save_public_key,
    seal_update,
)

CTX = SealContext(run_id=7, server_round=3, node_id=12345678901234, basis_fingerprint="ab12" * 16)
PAYLOAD = bytes(range(256)) * 20  # 5120 B, about one rank-16 update


@pytest.fixture(scope="module", params=[X25519, PQ_HYBRID])
def key(request):
    return ServerPrivateKey.generate(request.param)


def _rejects(sealed, key, context=CTX) -> str:
    with pytest.raises(SealError) as err:
        open_update(sealed, key, context)
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_round_trip_and_overhead(key):
    public = ServerPublicKey.from_bytes(key.public_key.raw)  # as a client gets it off the wire
    for size in (0, 1, len(PAYLOAD)):
        sealed = seal_update(PAYLOAD[:size], public, CTX)
        assert len(sealed) == size + OVERHEAD[key.suite]
        assert open_update(sealed, key, CTX) == PAYLOAD[:size]
    assert OVERHEAD[X25519] == 48 and OVERHEAD[PQ_HYBRID] == 1136


def test_sealing_is_randomized(key):
    assert seal_update(PAYLOAD, key.public_key, CTX) != seal_update(PAYLOAD, key.public_key, CTX)


@pytest.mark.parametrize(
    "other",
    [
        SealContext(7, 2, CTX.node_id, CTX.basis_fingerprint),  # replayed from another round
        SealContext(7, 3, CTX.node_id + 1, CTX.basis_fingerprint),  # another node's update
        SealContext(8, 3, CTX.node_id, CTX.basis_fingerprint),  # another run
        SealContext(7, 3, CTX.node_id, "cd34" * 16),  # another basis
    ],
)
def test_other_context_rejected(key, other):
    _rejects(seal_update(PAYLOAD, key.public_key, other), key)


def test_tampered_anywhere_rejected(key):
    sealed = seal_update(PAYLOAD, key.public_key, CTX)
    rng = random.Random(0)
    positions = [0, OVERHEAD[key.suite] - 17, len(sealed) // 2, len(sealed) - 1]
    positions += rng.sample(range(len(sealed)), 20)
    for pos in positions:
        tampered = bytearray(sealed)
        tampered[pos] ^= 1 << rng.randrange(8)
        _rejects(bytes(tampered), key)


def test_another_key_truncated_random_rejected(key):
    sealed = seal_update(PAYLOAD, key.public_key, CTX)
    _rejects(sealed, ServerPrivateKey.generate(key.suite))
    for size in (0, 1, OVERHEAD[key.suite] - 1, OVERHEAD[key.suite], len(sealed) - 1):
        _rejects(sealed[:size], key)
    assert "truncated" in _rejects(b"", key)
    _rejects(os.urandom(len(sealed)), key)
    _rejects(sealed + b"\0", key)


@pytest.mark.parametrize("junk", [None, "text", 42, [1, 2], {"a": 1}, 3.5])
def test_wrong_types_rejected(key, junk):
    _rejects(junk, key)
    with pytest.raises(SealError):
        open_update(seal_update(b"x", key.public_key, CTX), junk, CTX)
    with pytest.raises(SealError):
        open_update(seal_update(b"x", key.public_key, CTX), key, junk)
    with pytest.raises(SealError):
        seal_update(junk, key.public_key, CTX)
    with pytest.raises(SealError):
        ServerPublicKey.from_bytes(junk)


def test_bad_contexts_and_public_keys():
    for bad in [dict(run_id=-1), dict(server_round=2**64), dict(node_id="1"), dict(basis_fingerprint=None)]:
        fields = dict(run_id=1, server_round=1, node_id=1, basis_fingerprint="ab") | bad
        with pytest.raises(SealError):
            SealContext(**fields)
    for raw in (b"", b"\0" * 31, b"\0" * 33, os.urandom(1216)[:1000]):
        with pytest.raises(SealError):
            ServerPublicKey.from_bytes(raw)


def test_key_files(tmp_path, key):
    private_path, public_path = tmp_path / "server.key", tmp_path / "server.pub"
    save_private_key(key, private_path)
    save_public_key(key.public_key, public_path)
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    loaded, pinned = load_private_key(private_path), load_public_key(public_path)
    assert pinned == key.public_key and loaded.public_key == key.public_key
    assert pinned.fingerprint == key.public_key.fingerprint and len(pinned.fingerprint) == 64
    assert open_update(seal_update(PAYLOAD, pinned, CTX), loaded, CTX) == PAYLOAD
    assert key.public_key.raw.hex() not in repr(loaded) and "public" in repr(loaded)
    with pytest.raises(SealError, match="cannot create"):
        save_private_key(key, private_path)  # never overwrites a key
    os.chmod(private_path, 0o644)
    with pytest.raises(SealError, match="readable by others"):
        load_private_key(private_path)
    for bad in ("", "loraxs-hpke-public-key x25519 zz\n", "something else entirely\n"):
        public_path.write_text(bad)
        with pytest.raises(SealError):
            load_public_key(public_path)
    with pytest.raises(SealError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
