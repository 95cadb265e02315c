"""Fuzzing every loader of outside bytes: adapter files, factor files, the update
decoder, data folders and encrypted at-rest blobs. Random, truncated, bit-flipped and mutated
inputs only ever give the project's own LoraXSError (or a subclass), or a valid result; never
another exception, a hang or an unbounded allocation."""

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.artifacts.adapter_file import AdapterMeta, adapter_from_bytes, adapter_to_bytes, metadata_digest
from shared.artifacts.basis_file import basis_from_bytes, basis_to_bytes
from shared.crypto.at_rest import KeySource, decrypt_bytes, encrypt_bytes
from shared.data.local_folder import load_local_folder
from shared.errors import LoraXSError
from shared.federation.protocol import check_update, pack_adapter, pack_basis, unpack_adapter, unpack_basis
from shared.loraxs.basis import Basis

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RANK = 2
NAMES = ["layer.0.query.lora_R", "layer.0.value.lora_R", "classifier.weight", "classifier.bias"]


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {NAMES[0]: (RANK, RANK), NAMES[1]: (RANK, RANK), NAMES[2]: (2, 4), NAMES[3]: (2,)}
    return {name: torch.randn(shape, generator=generator) * 0.1 for name, shape in shapes.items()}


def tiny_basis() -> Basis:
    generator = torch.Generator().manual_seed(1)
    return Basis(
        rank=RANK,
        factors={
            "layer.0.query": (torch.randn(4, RANK, generator=generator), torch.randn(RANK, 4, generator=generator)),
            "layer.0.value": (torch.randn(4, RANK, generator=generator), torch.randn(RANK, 4, generator=generator)),
        },
    )


BASIS = tiny_basis()
META = AdapterMeta(
    base_model="sentence-transformers/all-MiniLM-L6-v2",
    task="seq-cls",
    rank=RANK,
    alpha=16.0,
    targets=("query", "value"),
    labels=("neg", "pos"),
    basis_fingerprint=BASIS.fingerprint,
    extra={"kind": "global"},
)
ADAPTER = adapter_to_bytes(tiny_state(), META)
BASIS_FILE = basis_to_bytes(BASIS, META.base_model)
RAW_KEY = KeySource(key=bytes(range(32)))
SEALED = encrypt_bytes(ADAPTER, RAW_KEY)


def flipped(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for bit in bits:
        out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def mutations(valid: bytes):
    """Random bytes, a truncation, bit flips, or a random splice of the valid bytes."""
    return st.one_of(
        st.binary(max_size=4096),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.lists(st.integers(0, 8 * len(valid) - 1), min_size=1, max_size=16).map(lambda bits: flipped(valid, bits)),
        st.tuples(st.integers(0, len(valid)), st.binary(max_size=64)).map(
            lambda p: valid[: p[0]] + p[1] + valid[p[0] :]
        ),
    )


def only_own_errors(call) -> None:
    try:
        call()
    except LoraXSError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(err)


# -- adapter and factor files -----------------------------------------------------------------


def test_the_seeds_are_valid():
    state, meta = adapter_from_bytes(ADAPTER, "seed")
    assert meta == META and set(state) == set(NAMES)
    assert basis_from_bytes(BASIS_FILE, "seed")[0].fingerprint == BASIS.fingerprint
    assert decrypt_bytes(SEALED, RAW_KEY) == ADAPTER


@FUZZ
@given(mutations(ADAPTER))
def test_adapter_bytes(data):
    only_own_errors(lambda: adapter_from_bytes(data, "fuzzed.safetensors"))


JSON_TEXT = (
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    ).map(json.dumps)
    | st.text(max_size=40)
    | st.sampled_from(["[" * 5000, "1e999", "NaN", "-Infinity", "9" * 5000])
)


def with_metadata(data: bytes, key: str, value: str) -> bytes:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header["__metadata__"]
    metadata[key] = value
    metadata["metadata_sha256"] = metadata_digest(metadata)  # the checksum passes: the values are checked
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + size :]


@FUZZ
@given(
    st.sampled_from(["base_model", "task", "rank", "alpha", "targets", "labels", "basis_fingerprint", "extra"]),
    JSON_TEXT,
)
def test_adapter_metadata_values(key, value):
    only_own_errors(lambda: adapter_from_bytes(with_metadata(ADAPTER, key, value), "fuzzed.safetensors"))


@FUZZ
@given(mutations(BASIS_FILE))
def test_factor_file_bytes(data):
    only_own_errors(lambda: basis_from_bytes(data, "fuzzed.basis"))


@FUZZ
@given(st.sampled_from(["rank", "fingerprint", "format", "base_model"]), JSON_TEXT)
def test_factor_file_metadata_values(key, value):
    size = int.from_bytes(BASIS_FILE[:8], "little")
    header = json.loads(BASIS_FILE[8 : 8 + size])
    header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = len(raw).to_bytes(8, "little") + raw + BASIS_FILE[8 + size :]
    only_own_errors(lambda: basis_from_bytes(data, "fuzzed.basis"))


# -- the update decoder (shared/federation/protocol.py) ---------------------------------------


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


SHAPES = st.lists(st.integers(0, 5), max_size=4).map(tuple)
DTYPES = st.sampled_from(["float32", "float16", "float64", "int64", "bool", "<U4", "object", "complex64", "bogus"])


@st.composite
def arrays(draw):
    """An Array as a client might send it: honest bytes of a random array, bytes that lie about
    the shape or dtype, mutated npy bytes, or noise."""
    shape, dtype = draw(SHAPES), draw(DTYPES)
    honest = npy(np.zeros(shape, dtype=np.float32) + draw(st.floats(allow_nan=True, allow_infinity=True, width=32)))
    data = draw(st.one_of(st.just(honest), mutations(honest), st.binary(max_size=256)))
    return Array(
        dtype=dtype, shape=shape, stype=draw(st.sampled_from(["numpy.ndarray", "torch.Tensor", ""])), data=data
    )


@st.composite
def records(draw):
    expected = pack_adapter(tiny_state(), "fp32")
    keys = draw(
        st.one_of(
            st.just(list(expected.keys())), st.lists(st.sampled_from(NAMES + ["lora_R", "x"]), max_size=5, unique=True)
        )
    )
    values = {}
    for key in keys:
        values[key] = draw(st.one_of(arrays(), st.just(expected[key]) if key in expected else arrays()))
    return ArrayRecord(values)


EXPECTED_UPDATE = pack_adapter(tiny_state(), "fp32")


@FUZZ
@given(st.one_of(records(), st.just(ConfigRecord({"lora_R": 1.0})), st.just(MetricRecord({"lora_R": 1.0}))))
def test_check_update_never_raises(record):
    reason = check_update(record, EXPECTED_UPDATE)
    assert reason is None or isinstance(reason, str)


@FUZZ
@given(records())
def test_unpack_adapter(record):
    only_own_errors(lambda: unpack_adapter(record, NAMES))


@FUZZ
@given(
    st.one_of(
        st.dictionaries(
            st.sampled_from(["layer.0.query.lora_A", "layer.0.query.lora_B", "x.lora_A", "lora_B"]),
            arrays(),
            max_size=4,
        ).map(ArrayRecord),
        st.just(pack_basis(BASIS)),
    )
)
def test_unpack_basis(record):
    only_own_errors(lambda: unpack_basis(record, BASIS.fingerprint))


# -- data folders ---------------------------------------------------------------------------

VALID_JSONL = "".join(
    json.dumps({"text": f"review {i}", "label": ["neg", "pos"][i % 2]}) + "\n" for i in range(6)
).encode()
VALID_CSV = ("text,label\n" + "".join(f"review {i},{['neg', 'pos'][i % 2]}\n" for i in range(6))).encode()


@FUZZ
@given(
    st.sampled_from(["data.jsonl", "data.csv", "train.jsonl", "notes.txt"]),
    st.one_of(mutations(VALID_JSONL), mutations(VALID_CSV)),
)
def test_data_folder_bytes(name, data):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).write_bytes(data)
        for task in ("seq-cls", "causal-lm"):
            only_own_errors(lambda: load_local_folder(folder, task=task))


# -- encrypted at-rest blobs ------------------------------------------------------------------


@FUZZ
@given(mutations(SEALED))
def test_encrypted_blob_bytes(data):
    only_own_errors(lambda: decrypt_bytes(data, RAW_KEY, "fuzzed.safetensors"))


@FUZZ
@given(st.binary(max_size=64))
def test_encrypted_blob_headers_for_a_passphrase(tail):
    """A crafted scrypt header never makes the reader derive a key with unbounded cost."""
    key = KeySource(passphrase=b"secret", log2_n=10)
    header = b"LXSENC" + bytes([1, 1]) + tail
    only_own_errors(lambda: decrypt_bytes(header, key, "fuzzed"))
