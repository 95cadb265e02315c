"""What travels between the ServerApp and the ClientApps, and how tensors become records.

Message content (RecordDict):
  "arrays"  ArrayRecord, the adapter: "lora_R" = every r x r matrix stacked (L, r, r) in model
            order, plus one array per head tensor (e.g. "classifier.weight"), in update-dtype.
  "config"  ConfigRecord: "server-round", "fingerprint" (of the basis the adapter belongs to).
  "basis"   ArrayRecord, the frozen factors "<module>.lora_B" (out, r) / "<module>.lora_A" (r, in),
            in basis-dtype (float32, float16, or bfloat16 bits as uint16); with basis-delivery ship
            in the first message to a node; always after it answered "unknown-fingerprint".
  recipe    with basis-delivery derive, the first message's config carries "basis-model",
            "basis-rank", "basis-targets", "basis-method", "basis-dtype" in place of "basis"
            (shared/federation/basis_recipe.py): the node derives the factors itself.
Replies:
  train     "arrays" (same keys/shapes/dtype as sent), "metrics" ("num-examples", "train-loss"),
            "status" ("fingerprint"; "factors" = "derived" when the node derived them for it).
  evaluate  "metrics" ("num-examples", "accuracy-global", ... ), "status".
  unknown   "status" with "error" = "unknown-fingerprint": the node lacks the factors ("factors" =
            "mismatch" when it derived factors of another fingerprint).
encrypt-updates: config "server-key" rides with "basis"; a train reply carries "sealed" (one HPKE
ciphertext of its "arrays") in place of "arrays" (shared/federation/sealed_update.py).
secure-aggregation: the train config holds the round's setup and the train reply its keys in
  place of "arrays"; three stage messages follow (shared/federation/secure_messages.py).
  query     "status" with "partition-id" (the node config's): asked once per run, so that the
            server samples partitions, not Flower's random node ids.
Stacking the R matrices keeps the upload to three arrays: one np.save header each, not 26.
Both sides know the module order: it is the order of `adapter_state(model)` of the same model.
"""

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord

from shared.artifacts.basis_file import basis_from_tensors, basis_to_tensors
from shared.errors import LoraXSError
from shared.federation.keys import ARRAYS, BASIS, CONFIG, METRICS, PARTITION_ID, STATUS  # noqa: F401 - the contract's names
from shared.loraxs.basis import Basis
from shared.loraxs.mixed_rank import top_left, truncated_factors

STACKED_R = "lora_R"
UNKNOWN_FINGERPRINT = "unknown-fingerprint"
FACTORS, DERIVED, MISMATCH = "factors", "derived", "mismatch"  # status: what a node did with a recipe
NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16}
TRAIN_METRICS = ("num-examples", "train-loss")
EVALUATE_METRICS = ("num-examples", "accuracy-global", "loss-global", "shifted")
PERSONAL_METRICS = ("accuracy-personal", "loss-personal", "personal-round")


def pack_adapter(state: dict[str, torch.Tensor], update_dtype: str) -> ArrayRecord:
    """Adapter state -> {"lora_R": (L, r, r), head tensors...} in `update_dtype`."""
    dtype = NUMPY_DTYPES[update_dtype]
    r_names = [name for name in state if name.endswith(STACKED_R)]
    arrays = {}
    if r_names:
        stacked = torch.stack([state[name].detach().float().cpu() for name in r_names])  # (L, r, r)
        arrays[STACKED_R] = Array(stacked.numpy().astype(dtype))
    for name, tensor in state.items():
        if name not in r_names:
            arrays[name] = Array(tensor.detach().float().cpu().numpy().astype(dtype))
    return ArrayRecord(arrays)


def decoded(record: ArrayRecord, key: str) -> np.ndarray:
    """One array of a received record as numpy; anything malformed is a LoraXSError."""
    value = record[key]
    if not isinstance(value, Array):
        raise LoraXSError(f"{key} is a {type(value).__name__}, not an array")
    try:
        return value.numpy()
    except Exception as err:  # malformed bytes or an unknown stype from a peer: a reason, not a crash
        raise LoraXSError(f"{key} cannot be decoded ({type(err).__name__})") from None


def unpack_adapter(record: ArrayRecord, state_names: list[str]) -> dict[str, torch.Tensor]:
    """Inverse of `pack_adapter` for a model whose adapter state has `state_names` (in order)."""
    if not isinstance(record, ArrayRecord):
        raise LoraXSError(f"the adapter arrays come as a {type(record).__name__}, not an ArrayRecord")
    r_names = [name for name in state_names if name.endswith(STACKED_R)]
    head_names = [name for name in state_names if name not in r_names]
    expected = ([STACKED_R] if r_names else []) + head_names
    if list(record.keys()) != expected:
        raise LoraXSError(f"adapter arrays {list(record.keys())[:4]} do not match {expected[:4]}")
    state = {}
    if r_names:
        stacked = torch.from_numpy(decoded(record, STACKED_R).astype(np.float32))  # (L, r, r)
        if stacked.dim() != 3 or stacked.shape[0] != len(r_names):
            raise LoraXSError(f"lora_R has shape {tuple(stacked.shape)}, expected ({len(r_names)}, r, r)")
        state.update({name: stacked[i].clone() for i, name in enumerate(r_names)})  # each (r, r)
    for name in head_names:
        state[name] = torch.from_numpy(decoded(record, name).astype(np.float32))
    return {name: state[name] for name in state_names}


def top_left_adapter(record: ArrayRecord, rank: int) -> ArrayRecord:
    """The adapter as a device at rank r' sees it: lora_R (L, r, r) -> (L, r', r'); head as is."""
    if STACKED_R not in record or decoded(record, STACKED_R).shape[-1] == rank:
        return record
    return ArrayRecord(
        {k: Array(top_left(decoded(record, k), rank)) if k == STACKED_R else v for k, v in record.items()}
    )


def nested_basis(basis: Basis, rank: int) -> Basis:
    """The rank-r' factors nested in `basis` (first r' columns of B, rows of A)."""
    return Basis(rank, truncated_factors(basis.factors, rank))


def cast_record(record: ArrayRecord, update_dtype: str) -> ArrayRecord:
    dtype = NUMPY_DTYPES[update_dtype]
    return ArrayRecord({k: Array(v.numpy().astype(dtype)) for k, v in record.items()})


def payload_bytes(record: ArrayRecord) -> int:
    """Raw tensor bytes of a record (no headers): what the adapter itself weighs."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in record.values())


def pack_basis(basis: Basis, basis_dtype: str = "fp32") -> ArrayRecord:
    """The factors in `basis_dtype` (their values are already rounded to it, so nothing is lost);
    bf16 travels as its bits in uint16 (numpy has no bfloat16)."""
    return ArrayRecord({k: Array(_wire_factor(v.float(), basis_dtype)) for k, v in basis_to_tensors(basis).items()})


def _wire_factor(factor: torch.Tensor, basis_dtype: str) -> np.ndarray:
    if basis_dtype == "bf16":
        return factor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return factor.numpy().astype(NUMPY_DTYPES[basis_dtype])


def _factor_from_wire(array: np.ndarray) -> torch.Tensor:
    """float32 / float16 / bf16 bits (uint16) -> float32 (exact)."""
    if array.dtype == np.uint16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(array))


def tensors_from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    if not isinstance(record, ArrayRecord):
        raise LoraXSError(f"the arrays come as a {type(record).__name__}, not an ArrayRecord")
    return {k: torch.from_numpy(np.ascontiguousarray(decoded(record, k))) for k in record.keys()}


def unpack_basis(record: ArrayRecord, expected_fingerprint: str) -> Basis:
    """The factors of a received (or stored) bundle; their fingerprint must be the announced one."""
    if not isinstance(record, ArrayRecord):
        raise LoraXSError(f"the factors come as a {type(record).__name__}, not an ArrayRecord")
    tensors = {k: _factor_from_wire(decoded(record, k)) for k in record.keys()}
    if not tensors:
        raise LoraXSError("the factor bundle is empty")
    a_keys = [key for key in tensors if key.endswith(".lora_A")]
    if not a_keys:
        raise LoraXSError("the factor bundle holds no lora_A factor")
    basis = basis_from_tensors(tensors, int(tensors[a_keys[0]].shape[0]))  # A is (r, in)
    if basis.fingerprint != expected_fingerprint:
        raise LoraXSError(
            f"the factor bundle hashes to {basis.fingerprint[:12]}, not the announced {expected_fingerprint[:12]}"
        )
    return basis


def check_update(record: ArrayRecord, expected: ArrayRecord) -> str | None:
    """Why a client's adapter update must be rejected (None = fine): record and value types, keys,
    shapes, dtype, finite. Never raises on what a client sent (a ConfigRecord with the right
    keys, a float where an Array belongs, ...)."""
    if not isinstance(record, ArrayRecord):
        return f"the adapter arrays come as a {type(record).__name__}, not an ArrayRecord"
    if list(record.keys()) != list(expected.keys()):
        return f"arrays {sorted(record.keys())[:4]} instead of {sorted(expected.keys())[:4]}"
    for key, want in expected.items():
        got = record[key]
        if not isinstance(got, Array):
            return f"{key} is a {type(got).__name__}, not an array"
        if tuple(got.shape) != tuple(want.shape):
            return f"{key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"{key} has dtype {got.dtype}, expected {want.dtype}"
        try:
            values = got.numpy()
        except Exception as err:  # malformed bytes from a client: a reason, not a crash
            return f"{key} cannot be decoded ({type(err).__name__})"
        if values.shape != tuple(want.shape) or values.dtype != np.dtype(want.dtype):
            return f"{key} decodes to {values.dtype}{list(values.shape)}, not what it announces"
        if not np.isfinite(values).all():
            return f"{key} holds NaN or Inf"
    return None


def clean_metrics(record: MetricRecord, keys: tuple[str, ...]) -> MetricRecord | str:
    """Exactly `keys`, each a finite number, "num-examples" > 0; else why not (a str)."""
    if not isinstance(record, MetricRecord):
        return f"the metrics come as a {type(record).__name__}, not a MetricRecord"
    values = {}
    for key in keys:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"metric {key} is {value!r}"
        values[key] = value
    if not values["num-examples"] > 0:
        return f"num-examples is {values['num-examples']!r}"
    return MetricRecord(values)
