"""The wire format: adapter <-> stacked arrays, factor bundles, update checks, measured bytes."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.traffic import wire_bytes
from shared.errors import LoraXSError
from shared.federation.protocol import (
    STACKED_R,
    cast_record,
    check_update,
    clean_metrics,
    pack_adapter,
    pack_basis,
    payload_bytes,
    unpack_adapter,
    unpack_basis,
)
from shared.loraxs.basis import Basis

MINILM_LAYERS, RANK, HIDDEN = 24, 16, 384  # the default adapter: 24 R matrices + a 2-class head


def minilm_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {
        f"bert.encoder.layer.{i // 4}.m{i % 4}.lora_R": torch.randn(RANK, RANK, generator=g)
        for i in range(MINILM_LAYERS)
    }
    state["classifier.weight"] = torch.randn(2, HIDDEN, generator=g)
    state["classifier.bias"] = torch.randn(2, generator=g)
    return state


def test_pack_stacks_every_r_in_order_and_unpack_inverts_it():
    state = minilm_like_state()
    record = pack_adapter(state, "fp32")
    assert list(record.keys()) == [STACKED_R, "classifier.weight", "classifier.bias"]
    stacked = record[STACKED_R].numpy()
    assert stacked.shape == (MINILM_LAYERS, RANK, RANK) and stacked.dtype == np.float32
    names = list(state)
    assert np.array_equal(stacked[5], state[names[5]].numpy())
    back = unpack_adapter(record, names)
    assert list(back) == names
    assert all(torch.equal(back[k], state[k]) for k in names)


def test_fp16_halves_the_payload_and_rounds_like_half_precision():
    state = minilm_like_state()
    full, half = pack_adapter(state, "fp32"), pack_adapter(state, "fp16")
    assert payload_bytes(full) == 24 * 16 * 16 * 4 + 770 * 4 == 27_656
    assert payload_bytes(half) * 2 == payload_bytes(full)
    back = unpack_adapter(half, list(state))
    assert torch.equal(back["classifier.bias"], state["classifier.bias"].half().float())


def test_unpack_refuses_arrays_for_another_model():
    state = minilm_like_state()
    record = pack_adapter(state, "fp32")
    with pytest.raises(LoraXSError, match="do not match"):
        unpack_adapter(record, list(state)[:-1])


def test_default_adapter_upload_fits_32_kib_on_the_wire():
    """The lead's budget: 24 x 16 x 16 R + 770 head floats, fp32, as a whole reply message."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    request = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=12345, message_type="train"
    )
    content = RecordDict(
        {
            "arrays": pack_adapter(minilm_like_state(), "fp32"),
            "metrics": MetricRecord({"num-examples": 100, "train-loss": 0.5}),
            "status": ConfigRecord({"fingerprint": "f" * 64}),
        }
    )
    size = wire_bytes(Message(content, reply_to=request))
    assert 27_656 < size <= 32 * 1024
    assert size - 27_656 < 4096  # framing: headers, ids, metrics


def small_basis() -> Basis:
    g = torch.Generator().manual_seed(1)
    return Basis(
        rank=4,
        factors={
            "layer.0.query": (torch.randn(8, 4, generator=g), torch.randn(4, 6, generator=g)),
            "layer.0.value": (torch.randn(8, 4, generator=g), torch.randn(4, 6, generator=g)),
        },
    )


def test_basis_bundle_round_trips_and_is_checked_against_its_fingerprint():
    basis = small_basis()
    record = pack_basis(basis)
    assert unpack_basis(record, basis.fingerprint).fingerprint == basis.fingerprint
    tampered = ArrayRecord(dict(record.items()))
    values = tampered["layer.0.query.lora_A"].numpy().copy()
    values[0, 0] += 1e-3
    tampered["layer.0.query.lora_A"] = Array(values)
    with pytest.raises(LoraXSError, match="not the announced"):
        unpack_basis(tampered, basis.fingerprint)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda a: {**a, "lora_R": np.full_like(a["lora_R"], np.nan)}, "NaN or Inf"),
        (lambda a: {**a, "lora_R": a["lora_R"] * np.inf}, "NaN or Inf"),
        (lambda a: {**a, "lora_R": a["lora_R"][:-1]}, "has shape"),
        (lambda a: {**a, "lora_R": a["lora_R"].astype(np.float64)}, "has dtype"),
        (lambda a: {k: v for k, v in a.items() if k != "classifier.bias"}, "arrays"),
    ],
)
def test_check_update_names_what_is_wrong(corrupt, reason):
    expected = pack_adapter(minilm_like_state(), "fp32")
    good = {k: v.numpy() for k, v in pack_adapter(minilm_like_state(1), "fp32").items()}
    assert check_update(ArrayRecord({k: Array(v) for k, v in good.items()}), expected) is None
    bad = ArrayRecord({k: Array(v) for k, v in corrupt(good).items()})
    assert reason in check_update(bad, expected)


def test_check_update_sees_data_that_lies_about_its_shape():
    expected = pack_adapter(minilm_like_state(), "fp32")
    real = expected[STACKED_R]
    liar = Array(dtype=real.dtype, shape=real.shape, stype=real.stype, data=Array(np.zeros((3,), np.float32)).data)
    record = ArrayRecord({**dict(expected.items()), STACKED_R: liar})
    assert "not what it announces" in check_update(record, expected)


def test_cast_record_and_clean_metrics():
    record = cast_record(pack_adapter(minilm_like_state(), "fp16"), "fp32")
    assert {a.dtype for a in record.values()} == {"float32"}
    assert clean_metrics(
        MetricRecord({"num-examples": 3, "train-loss": 0.1, "extra": 1.0}), ("num-examples", "train-loss")
    ) == MetricRecord({"num-examples": 3, "train-loss": 0.1})
    assert "num-examples" in clean_metrics(
        MetricRecord({"num-examples": 0, "train-loss": 0.1}), ("num-examples", "train-loss")
    )
    assert "train-loss" in clean_metrics(
        MetricRecord({"num-examples": 3, "train-loss": float("nan")}), ("num-examples", "train-loss")
    )
