"""Personalization that never hurts: the line between two adapters is exact in delta W, and the
lam chosen on held-out data never scores below the start there."""

import dataclasses

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shared.base_models import build_adapted_model, load_tokenizer
from shared.data.batches import make_loader
from shared.errors import LoraXSError
from shared.interpolation import LAMBDA_GRID, choose_lambda, interpolate, paired_gain
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.layer import LoraXSLinear
from shared.loraxs.model import adapted_layers, adapter_state, load_adapter_state
from shared.personal_training import PersonalTrainingConfig, example_outcomes, personal_training, split_validation


def _layer(generator, out_features=6, in_features=8, rank=4) -> LoraXSLinear:
    base = nn.Linear(in_features, out_features)
    lora_B = torch.linalg.qr(torch.randn(out_features, rank, generator=generator))[0]  # (out, r)
    lora_A = torch.randn(rank, in_features, generator=generator)  # (r, in)
    return LoraXSLinear(base, lora_B, lora_A, scale=2.0)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_interpolated_r_gives_exactly_the_interpolated_delta_w(lam):
    generator = torch.Generator().manual_seed(0)
    layer = _layer(generator)
    r_start, r_tuned = torch.randn(4, 4, generator=generator), torch.randn(4, 4, generator=generator)
    head_start, head_tuned = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    mixed = interpolate({"lora_R": r_start, "head": head_start}, {"lora_R": r_tuned, "head": head_tuned}, lam)

    def delta(r):
        with torch.no_grad():
            layer.lora_R.copy_(r)
        return layer.delta_weight().double()  # (out, in)

    expected = delta(r_start) + lam * (delta(r_tuned) - delta(r_start))  # (out, in)
    assert torch.allclose(delta(mixed["lora_R"]), expected, atol=1e-5)
    # independently: s * B (R_s + lam (R_t - R_s)) A in float64
    B, A = layer.lora_B.double(), layer.lora_A.double()
    by_hand = layer.scale * B @ (r_start.double() + lam * (r_tuned.double() - r_start.double())) @ A
    assert torch.allclose(delta(mixed["lora_R"]), by_hand, atol=1e-5)
    assert torch.allclose(mixed["head"], head_start + lam * (head_tuned - head_start))
    if lam == 0.0:
        assert torch.equal(mixed["lora_R"], r_start) and torch.equal(mixed["head"], head_start)


def test_interpolation_refuses_states_that_do_not_match():
    a = {"x": torch.zeros(2, 2)}
    with pytest.raises(LoraXSError, match="different tensors"):
        interpolate(a, {"y": torch.zeros(2, 2)}, 0.5)
    with pytest.raises(LoraXSError, match="shapes"):
        interpolate(a, {"x": torch.zeros(3, 2)}, 0.5)
    with pytest.raises(LoraXSError, match="in \\[0, 1\\]"):
        interpolate(a, a, 1.5)


scores = st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.floats(0.0, 3.0))
def test_lambda_zero_never_loses_to_the_start_on_held_out(data, significance):
    n = data.draw(st.integers(1, 30))
    per_lam = {lam: data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)) for lam in LAMBDA_GRID}
    chosen = choose_lambda(per_lam, significance)
    mean = lambda v: sum(v) / len(v)
    assert chosen in LAMBDA_GRID and mean(per_lam[chosen]) >= mean(per_lam[0.0])
    if chosen != 0.0:
        gain, spread = paired_gain(per_lam[0.0], per_lam[chosen])
        assert gain > significance * spread and mean(per_lam[chosen]) == max(map(mean, per_lam.values()))


def test_ties_go_to_the_start_and_small_gains_need_evidence():
    start = [1.0, 0.0, 1.0, 0.0]
    assert choose_lambda({0.0: start, 0.5: [0.0, 1.0, 1.0, 0.0], 1.0: start}) == 0.0  # equal means
    one_more = {0.0: [0.0] * 10 + [1.0] * 10, 1.0: [1.0] + [0.0] * 9 + [1.0] * 10}
    assert choose_lambda(one_more, significance=0.0) == 1.0  # any gain
    assert choose_lambda(one_more, significance=1.0) == 0.0  # 1 win, 0 losses: 1 is not > 1 x 1
    flipped = {
        0.0: [0.0] * 15 + [1.0] * 5,
        0.5: [1.0] * 12 + [0.0] * 3 + [1.0] * 5,
        1.0: [1.0] * 14 + [0.0] + [1.0] * 5,
    }
    assert choose_lambda(flipped, significance=1.0) == 1.0  # 14 wins, 0 losses
    with pytest.raises(LoraXSError, match="lam = 0"):
        choose_lambda({1.0: [1.0]})


def _toy(n=60):
    words = ["good great fine", "bad awful poor"]
    return datasets.Dataset.from_dict(
        {"text": [f"{words[i % 2]} item {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    )


@pytest.mark.parametrize("lr", [5e-3, 3.0])
def test_from_a_given_adapter_the_kept_one_never_scores_below_it_on_validation(tiny_bert_dir, lr):
    """3.0 wrecks training: then lam = 0 and the given adapter is kept bit for bit."""
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_R.normal_(0, 0.01)
    given = {k: v.clone() for k, v in adapter_state(model).items()}
    tokenizer, data = load_tokenizer(tiny_bert_dir), _toy()
    config = PersonalTrainingConfig(lr=lr, epochs=3, seed=1, bf16=False)  # float32: rescored by the float32 model
    _, val = split_validation(data, config.val_fraction, config.seed, stratify=True)
    result = personal_training(model, data, tokenizer, "seq-cls", config, start="the global adapter")
    val_loader = make_loader(val, tokenizer, "seq-cls", 64, result.max_length)
    kept = adapter_state(model)
    mean = lambda v: sum(v) / len(v)
    kept_score = mean(example_outcomes(model, val_loader, "cpu", "seq-cls")[result.measure])
    load_adapter_state(model, given)
    given_score = mean(example_outcomes(model, val_loader, "cpu", "seq-cls")[result.measure])
    assert kept_score >= given_score
    if result.lam == 0.0:
        assert all(torch.equal(kept[k], given[k]) for k in given)
    else:
        assert result.lam_scores[result.lam] > result.lam_scores[0.0]
    load_adapter_state(model, kept)
    given = {k: v.clone() for k, v in kept.items()}
    if lr == 3.0:  # from a perfect adapter, a wrecking run keeps it exactly when accuracy chooses (ties: lam 0)
        assert mean(example_outcomes(model, val_loader, "cpu", "seq-cls")["accuracy"]) == 1.0
        by_accuracy = dataclasses.replace(config, select_on="accuracy")
        again = personal_training(model, data, tokenizer, "seq-cls", by_accuracy, start="the global adapter")
        assert again.lam == 0.0 and all(torch.equal(adapter_state(model)[k], given[k]) for k in given)
