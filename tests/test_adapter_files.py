"""Adapter and basis files: round trip, size, and every loader error."""

import json

import pytest
import torch

from shared.artifacts.adapter_file import adapter_meta, check_adapter_matches, load_adapter, save_adapter
from shared.artifacts.basis_file import load_basis, save_basis
from shared.base_models import build_adapted_model
from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state, load_adapter_state

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def adapted(tiny_bert_dir):
    config = LoraXSConfig(rank=4)
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", config, labels=LABELS, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    meta = adapter_meta(tiny_bert_dir, "seq-cls", config, basis, LABELS, round=2)
    return model, basis, meta


def test_round_trip_keeps_state_and_metadata(adapted, tmp_path, tiny_bert_dir):
    model, basis, meta = adapted
    path = tmp_path / "a.safetensors"
    size = save_adapter(path, adapter_state(model), meta)
    assert size == path.stat().st_size
    state, loaded = load_adapter(path)
    assert loaded == meta
    assert loaded.labels == tuple(LABELS) and loaded.extra == {"round": "2"}
    assert loaded.targets == ("query", "value", "attention.output.dense", "output.dense")
    original = adapter_state(model)
    assert set(state) == set(original) and all(torch.equal(state[k], original[k]) for k in state)
    fresh, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), LABELS, basis=basis, seed=5)
    load_adapter_state(fresh, state)
    x = {"input_ids": torch.tensor([[101, 2000, 2001, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    assert torch.allclose(fresh(**x).logits, model(**x).logits, atol=1e-6)


def test_file_holds_only_the_adapter_state(adapted, tmp_path):
    model, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter_state(model), meta)
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    keys = set(header) - {"__metadata__"}
    assert keys == set(adapter_state(model))
    assert not any("lora_A" in k or "lora_B" in k or "embeddings" in k for k in keys)
    assert header["__metadata__"]["basis_fingerprint"] == json.dumps(meta.basis_fingerprint)


def test_loader_errors(adapted, tmp_path):
    model, _, meta = adapted
    good = tmp_path / "good.safetensors"
    save_adapter(good, adapter_state(model), meta)
    data = good.read_bytes()

    with pytest.raises(LoraXSError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraXSError, match="truncated or corrupt"):
        load_adapter(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(LoraXSError, match="not a valid adapter"):
        load_adapter(garbage)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # one byte inside a tensor
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(LoraXSError, match="checksum"):
        load_adapter(corrupt)
    basis_path = tmp_path / "basis.safetensors"
    save_basis(basis_path, adapted[1], "m")
    with pytest.raises(LoraXSError, match="not a LoRA-XS adapter"):
        load_adapter(basis_path)  # a valid safetensors file of another format


def test_fingerprint_and_model_mismatch(adapted):
    _, basis, meta = adapted
    check_adapter_matches(meta, "a", meta.base_model, basis.fingerprint)
    with pytest.raises(LoraXSError, match="base model"):
        check_adapter_matches(meta, "a", "another/model", basis.fingerprint)
    with pytest.raises(LoraXSError, match="basis"):
        check_adapter_matches(meta, "a", meta.base_model, "0" * 64)


def test_shape_mismatch_with_another_rank(adapted, tmp_path, tiny_bert_dir):
    model, _, meta = adapted
    other, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=2), LABELS)
    with pytest.raises(LoraXSError, match="shape"):
        load_adapter_state(other, adapter_state(model))


def test_basis_file_round_trip_and_corruption(adapted, tmp_path):
    _, basis, _ = adapted
    path = tmp_path / "basis.safetensors"
    save_basis(path, basis, "tiny")
    loaded, base_model = load_basis(path)
    assert loaded.fingerprint == basis.fingerprint and base_model == "tiny"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LoraXSError, match="fingerprint"):
        load_basis(path)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(LoraXSError, match="does not exist"):
        build_adapted_model(str(tmp_path / "no-such-model"), "seq-cls", LoraXSConfig(), ["a", "b"])
