"""The LoRA-XS math against independent computations (plain torch, no project helpers)."""

import copy

import pytest
import torch
from torch import nn

from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.layer import LoraXSLinear
from shared.loraxs.model import (
    adapted_layers,
    adapter_state,
    compute_basis,
    inject,
    load_adapter_state,
    merged_model,
)


class TwoLayer(nn.Module):
    """A toy model with BERT-like module names."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.query = nn.Linear(12, 10)
        self.value = nn.Linear(10, 8)
        self.other = nn.Linear(8, 3)

    def forward(self, x):
        return self.other(torch.tanh(self.value(torch.tanh(self.query(x)))))


def _randomize_R(model, seed=1, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_R.copy_(torch.randn(layer.lora_R.shape, generator=g) * std)


def test_delta_weight_is_scale_U_R_Sigma_Vt():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    W = base.weight.detach().clone()
    config = LoraXSConfig(rank=4, alpha=8.0, target_modules=("query",), svd_method="exact")  # LAPACK signs
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # independent SVD
    model = nn.Module()
    model.query = base
    inject(model, config)
    layer = model.query
    R = torch.randn(4, 4)
    with torch.no_grad():
        layer.lora_R.copy_(R)
    expected = 2.0 * U[:, :4] @ R @ torch.diag(S[:4]) @ Vh[:4]  # scale = 8 / 4
    assert torch.allclose(layer.delta_weight(), expected, atol=1e-5)
    x = torch.randn(5, 12)
    assert torch.allclose(layer(x), x @ (W + expected).T + base.bias, atol=1e-5)


def test_identity_R_gives_best_rank_r_approximation():
    torch.manual_seed(0)
    base = nn.Linear(16, 9)
    W = base.weight.detach().clone()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    best = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]  # Eckart-Young optimum
    layer = LoraXSLinear(base, *_factors(W, 3), scale=1.0)
    with torch.no_grad():
        layer.lora_R.copy_(torch.eye(3))
    assert torch.allclose(layer.delta_weight(), best, atol=1e-5)
    # and it beats any other rank-3 matrix we try, e.g. a truncation of other singular vectors
    other = U[:, 1:4] @ torch.diag(S[1:4]) @ Vh[1:4]
    assert torch.linalg.norm(W - best) < torch.linalg.norm(W - other)


def _factors(W, r):
    config = LoraXSConfig(rank=r)
    from shared.loraxs.basis import svd_factors

    return svd_factors(W, config)


def test_sigma_sits_on_the_input_side():
    torch.manual_seed(0)
    W = torch.randn(6, 9)
    lora_B, lora_A = _factors(W, 3)
    assert torch.allclose(lora_B.T @ lora_B, torch.eye(3), atol=1e-5)  # B = U_r: orthonormal columns
    S = torch.linalg.svdvals(W)[:3]
    assert torch.allclose(torch.linalg.norm(lora_A, dim=1), S, atol=1e-5)  # rows of A have norm sigma_i


def test_normal_init_is_small_and_seeded_and_zeros_init_is_exact():
    a, b = TwoLayer(), TwoLayer()
    inject(a, LoraXSConfig(rank=4, target_modules=("query", "value")), seed=3)
    inject(b, LoraXSConfig(rank=4, target_modules=("query", "value")), seed=3)
    Ra = a.query.lora_R.detach()
    assert 0 < Ra.abs().max() < 1e-4
    assert torch.equal(Ra, b.query.lora_R.detach())
    z = TwoLayer()
    reference = copy.deepcopy(z)
    inject(z, LoraXSConfig(rank=4, target_modules=("query", "value"), init="zeros"))
    x = torch.randn(4, 12)
    assert torch.equal(z(x), reference(x))


def test_merged_model_matches_adapted_model_and_is_pure():
    model = TwoLayer()
    inject(model, LoraXSConfig(rank=4, alpha=16, target_modules=("query", "value")))
    _randomize_R(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_model(model)
    x = torch.randn(7, 12)
    assert (model(x) - merged(x)).abs().max() < 1e-5
    assert not adapted_layers(merged) and isinstance(merged.query, nn.Linear)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the adapted model is untouched
    model.eval()  # mode switches change no weight
    model.train()
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_averaging_R_averages_delta_W_exactly():
    """Weighted FedAvg of R over a shared basis == weighted mean of the clients' delta W."""
    reference = TwoLayer()
    config = LoraXSConfig(rank=4, alpha=16, target_modules=("query", "value"))
    basis = compute_basis(reference, config)
    clients, weights = [], torch.tensor([3.0, 1.0, 6.0])
    for seed in range(3):
        client = copy.deepcopy(reference)
        inject(client, config, basis=basis)
        _randomize_R(client, seed=seed + 10)
        clients.append(client)
    w = weights / weights.sum()
    states = [adapter_state(c) for c in clients]
    averaged = {k: sum(wi * s[k] for wi, s in zip(w, states)) for k in states[0]}
    server = copy.deepcopy(reference)
    inject(server, config, basis=basis)
    load_adapter_state(server, averaged)
    for name in ("query", "value"):
        mean_delta = sum(wi * adapted_layers(c)[name].delta_weight() for wi, c in zip(w, clients))
        assert torch.allclose(adapted_layers(server)[name].delta_weight(), mean_delta, atol=1e-6)


def test_plain_lora_averaging_is_not_exact():
    """The contrast: averaging B and A of plain LoRA does not average B @ A."""
    g = torch.Generator().manual_seed(0)
    Bs = [torch.randn(8, 4, generator=g) for _ in range(2)]
    As = [torch.randn(4, 8, generator=g) for _ in range(2)]
    mean_of_products = (Bs[0] @ As[0] + Bs[1] @ As[1]) / 2
    product_of_means = ((Bs[0] + Bs[1]) / 2) @ ((As[0] + As[1]) / 2)
    assert (mean_of_products - product_of_means).abs().max() > 1e-2


def test_adapter_state_is_exactly_R_and_head(tiny_bert_dir):
    from shared.base_models import build_adapted_model

    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), labels=["a", "b", "c"])
    state = adapter_state(model)
    r_keys = [k for k in state if k.endswith("lora_R")]
    assert len(r_keys) == len(basis.factors) == 8  # 2 layers x (query, value, attention.output.dense, output.dense)
    assert set(state) - set(r_keys) == {"classifier.weight", "classifier.bias"}
    assert state["classifier.weight"].shape == (3, 32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state)
    assert all(not k.endswith(("lora_A", "lora_B")) for k in state)


def test_causal_lm_targets_and_frozen_lm_head(tiny_llama_dir):
    from shared.base_models import build_adapted_model

    model, basis = build_adapted_model(tiny_llama_dir, "causal-lm", LoraXSConfig(rank=4))
    suffixes = {name.rsplit(".", 1)[-1] for name in basis.factors}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(k.endswith("lora_R") for k in adapter_state(model))


def test_load_adapter_state_rejects_wrong_keys_and_shapes():
    model = TwoLayer()
    inject(model, LoraXSConfig(rank=4, target_modules=("query",)))
    state = adapter_state(model)
    with pytest.raises(LoraXSError, match="missing"):
        load_adapter_state(model, {})
    with pytest.raises(LoraXSError, match="shape"):
        load_adapter_state(model, {"query.lora_R": torch.zeros(3, 3)})
    load_adapter_state(model, state)


def test_config_validation_and_clear_errors():
    with pytest.raises(LoraXSError, match="rank"):
        LoraXSConfig(rank=0)
    with pytest.raises(LoraXSError, match="alpha"):
        LoraXSConfig(alpha=-1)
    with pytest.raises(LoraXSError, match="init"):
        LoraXSConfig(init="xavier")
    with pytest.raises(LoraXSError, match="svd"):
        LoraXSConfig(svd_method="qr")
    with pytest.raises(LoraXSError, match=r"exceeds min\(out, in\)"):
        inject(TwoLayer(), LoraXSConfig(rank=11, target_modules=("query",)))
    with pytest.raises(LoraXSError, match="nn.Linear"):
        inject(TwoLayer(), LoraXSConfig(rank=2, target_modules=("nothing",)))
    model = TwoLayer()
    inject(model, LoraXSConfig(rank=2, target_modules=("query",)))
    with pytest.raises(LoraXSError, match="already adapted"):
        inject(model, LoraXSConfig(rank=2, target_modules=("query",)))


def test_gpt2_conv1d_raises_a_clear_error():
    from transformers.pytorch_utils import Conv1D

    model = nn.Module()
    model.c_attn = Conv1D(12, 8)
    with pytest.raises(LoraXSError, match="Conv1D.*torch.nn.Linear"):
        inject(model, LoraXSConfig(rank=2, target_modules=("c_attn",)))


def test_randomized_svd_is_close_to_exact_and_deterministic():
    torch.manual_seed(0)
    W = torch.randn(64, 5) @ torch.randn(5, 48) + 0.01 * torch.randn(64, 48)  # near rank 5
    exact = LoraXSConfig(rank=4)
    randomized = LoraXSConfig(rank=4, svd_method="randomized")
    from shared.loraxs.basis import svd_factors

    Be, Ae = svd_factors(W, exact)
    Br, Ar = svd_factors(W, randomized)
    assert torch.allclose(Be @ Ae, Br @ Ar, atol=1e-3)  # same rank-4 approximation
    Br2, Ar2 = svd_factors(W, randomized)
    assert torch.equal(Br, Br2) and torch.equal(Ar, Ar2)


def test_fingerprint_is_stable_and_sensitive():
    config = LoraXSConfig(rank=4, target_modules=("query", "value"))
    a = compute_basis(TwoLayer(seed=0), config)
    b = compute_basis(TwoLayer(seed=0), config)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert compute_basis(TwoLayer(seed=1), config).fingerprint != a.fingerprint  # other weights
    assert (
        compute_basis(TwoLayer(), LoraXSConfig(rank=3, target_modules=("query", "value"))).fingerprint != a.fingerprint
    )
    assert compute_basis(TwoLayer(), LoraXSConfig(rank=4, target_modules=("query",))).fingerprint != a.fingerprint
    flipped = dict(a.factors)
    B, A = flipped["query"]
    B2 = B.clone()
    B2[0, 0] = torch.nextafter(B2[0, 0], torch.tensor(1.0))  # one ulp in one factor
    flipped["query"] = (B2, A)
    from shared.loraxs.basis import Basis

    assert Basis(rank=4, factors=flipped).fingerprint != a.fingerprint
    renamed = {("q" if k == "query" else k): v for k, v in a.factors.items()}
    assert Basis(rank=4, factors=renamed).fingerprint != a.fingerprint
    model = TwoLayer()
    inject(model, config, basis=a)
    held = {n: (m.lora_B, m.lora_A) for n, m in adapted_layers(model).items()}  # the factors inject put in
    assert Basis(rank=4, factors=held).fingerprint == a.fingerprint


def test_inject_rejects_a_basis_of_another_shape():
    config = LoraXSConfig(rank=4, target_modules=("query", "value"))
    basis = compute_basis(TwoLayer(), config)
    with pytest.raises(LoraXSError, match="does not fit"):
        inject(TwoLayer(), LoraXSConfig(rank=4, target_modules=("query",)), basis=basis)
