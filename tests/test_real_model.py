"""The real packaged all-MiniLM-L6-v2: loads offline, adapts with the default config, trains."""

import socket

import pytest
import torch

from shared.artifacts.adapter_file import adapter_meta, load_adapter, save_adapter
from shared.base_models import DEFAULT_MODEL, build_adapted_model, load_tokenizer
from shared.data.batches import make_loader
from shared.data.catalog import load_dataset
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state, merged_model
from shared.training import TrainConfig, evaluate, train

pytestmark = pytest.mark.slow


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (e.g. to the model hub) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was contacted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_packaged_minilm_trains_offline_and_fits_32_kib(no_network, tmp_path):
    splits = load_dataset("rotten-tomatoes", seed=0)  # cached by the data tests / benchmarks
    config = LoraXSConfig()
    model, basis = build_adapted_model(None, "seq-cls", config, splits.labels)
    assert len(basis.factors) == 24  # 6 layers x (query, value, attention.output.dense, output.dense)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    train_loader = make_loader(splits.train.select(range(96)), tokenizer, "seq-cls", 16, shuffle=True)
    test_loader = make_loader(splits.test.select(range(64)), tokenizer, "seq-cls", 32)
    before = {k: v.clone() for k, v in adapter_state(model).items()}
    result = train(model, train_loader, TrainConfig(max_steps=6, lr=2e-3))
    after = adapter_state(model)
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.loss))
    assert all(not torch.equal(before[k], after[k]) for k in after)
    evaluation = evaluate(model, test_loader)
    assert 0.0 <= evaluation.accuracy <= 1.0 and evaluation.examples == 64

    path = tmp_path / "adapter.safetensors"
    size = save_adapter(path, after, adapter_meta(None, "seq-cls", config, basis, splits.labels))
    assert size <= 32 * 1024
    state, meta = load_adapter(path)
    assert meta.base_model == DEFAULT_MODEL and meta.basis_fingerprint == basis.fingerprint

    batch = next(iter(test_loader))
    batch.pop("labels")
    with torch.no_grad():
        diff = (merged_model(model)(**batch).logits - model(**batch).logits).abs().max().item()
    assert diff <= 1e-5
