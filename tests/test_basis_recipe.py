"""The canonical SVD recipe (float64, fixed signs, one rounding), basis dtypes, and the recipe
that travels in place of the factors (basis-delivery derive)."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from shared.errors import LoraXSError
from shared.federation.basis_recipe import BasisRecipe
from shared.federation.protocol import pack_basis, payload_bytes, unpack_basis
from shared.loraxs.basis import Basis, svd_factors
from shared.loraxs.config import LoraXSConfig


def _weight(seed=0, shape=(48, 40)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_canonical_factors_match_an_independent_float64_svd_with_the_sign_convention():
    W = _weight()
    lora_B, lora_A = svd_factors(W, LoraXSConfig(rank=5))
    U, S, Vh = np.linalg.svd(W.double().numpy(), full_matrices=False)  # numpy's LAPACK, not torch's
    U, S, Vh = U[:, :5], S[:5], Vh[:5]
    signs = np.sign(U[np.abs(U).argmax(axis=0), np.arange(5)])  # largest |entry| of each column > 0
    np.testing.assert_allclose(lora_B.numpy(), (U * signs).astype(np.float32), rtol=0, atol=2e-7)
    np.testing.assert_allclose(lora_A.numpy(), ((signs * S)[:, None] * Vh).astype(np.float32), rtol=0, atol=2e-6)
    assert lora_B.dtype == lora_A.dtype == torch.float32
    pivots = lora_B.abs().argmax(dim=0)
    assert (lora_B[pivots, torch.arange(5)] > 0).all()


def test_canonical_factors_do_not_depend_on_the_sign_lapack_picks():
    """W and -W have singular vectors of opposite LAPACK signs; the recipe fixes B's signs, so
    B is identical and A flips exactly (B A = W_r)."""
    W = _weight(1)
    config = LoraXSConfig(rank=4)
    B1, A1 = svd_factors(W, config)
    B2, A2 = svd_factors(-W, config)
    assert torch.equal(B1, B2) and torch.equal(A1, -A2)


def test_same_weights_same_bits_and_other_threads_same_bits():
    W = _weight(2, (96, 64))
    config = LoraXSConfig(rank=8)
    first = Basis(8, {"w": svd_factors(W, config)}).fingerprint
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert Basis(8, {"w": svd_factors(W, config)}).fingerprint == first
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "basis_dtype, rounding, wire, width",
    [
        ("fp16", torch.float16, "float16", 2),
        ("bf16", torch.bfloat16, "uint16", 2),
        ("fp32", torch.float32, "float32", 4),
    ],
)
def test_basis_dtype_rounds_the_factors_and_ships_them_losslessly(basis_dtype, rounding, wire, width):
    W = _weight(3)
    lora_B, lora_A = svd_factors(W, LoraXSConfig(rank=4, basis_dtype=basis_dtype))
    exact_B, _ = svd_factors(W, LoraXSConfig(rank=4))
    assert torch.equal(lora_B.to(rounding).float(), lora_B) and lora_B.dtype == torch.float32
    assert torch.allclose(lora_B, exact_B, atol=1e-2) and (basis_dtype == "fp32") == torch.equal(lora_B, exact_B)
    basis = Basis(4, {"w": (lora_B, lora_A)})
    record = pack_basis(basis, basis_dtype)
    assert {a.dtype for a in record.values()} == {wire}
    assert payload_bytes(record) == basis.num_bytes() * width // 4
    back = unpack_basis(record, basis.fingerprint)  # exact: the fingerprint is the proof
    assert torch.equal(back.factors["w"][0], lora_B) and torch.equal(back.factors["w"][1], lora_A)


def test_a_factor_out_of_fp16_range_is_one_clear_error():
    with pytest.raises(LoraXSError, match="range of fp16"):
        svd_factors(_weight() * 1e6, LoraXSConfig(rank=2, basis_dtype="fp16"))
    with pytest.raises(LoraXSError, match="basis dtype"):
        LoraXSConfig(basis_dtype="int8")


def test_the_recipe_round_trips_and_malformed_recipes_are_none():
    recipe = BasisRecipe.of("some/model", LoraXSConfig(rank=4, target_modules=("query", "value"), basis_dtype="bf16"))
    assert recipe == BasisRecipe("some/model", 4, "query,value", "canonical", "bf16")
    assert BasisRecipe.from_config(ConfigRecord({**recipe.to_config(), "server-round": 1})) == recipe
    assert BasisRecipe.from_config(ConfigRecord({"server-round": 1})) is None
    assert BasisRecipe.from_config(ConfigRecord({**recipe.to_config(), "basis-rank": "4"})) is None
    assert BasisRecipe.from_config(ConfigRecord({**recipe.to_config(), "basis-rank": True})) is None
    assert BasisRecipe.from_config(None) is None


@pytest.mark.parametrize("basis_dtype", ["fp32", "bf16"])
def test_an_adapter_file_opens_without_basis_file_or_cache_by_deriving_its_factors(
    tiny_bert_dir, tmp_path, monkeypatch, basis_dtype
):
    """client.run / client.export without --basis: the factors are derived by the recipe the
    adapter file names (canonical SVD, its basis dtype) and checked against its fingerprint."""
    from shared.artifacts.adapter_file import adapter_meta, save_adapter
    from shared.artifacts.open_adapter import open_adapter, read_adapter
    from shared.base_models import build_adapted_model
    from shared.loraxs.model import adapter_state

    monkeypatch.setenv("LORAXS_CACHE", str(tmp_path / "empty-cache"))
    lora = LoraXSConfig(rank=4, alpha=4.0, basis_dtype=basis_dtype)
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", lora, labels=["neg", "pos"])
    meta = adapter_meta(tiny_bert_dir, "seq-cls", lora, basis, ["neg", "pos"])
    assert meta.extra.get("basis_dtype") == (None if basis_dtype == "fp32" else basis_dtype)
    save_adapter(tmp_path / "a.safetensors", adapter_state(model), meta)
    opened = open_adapter(read_adapter(tmp_path / "a.safetensors", model=tiny_bert_dir))
    assert opened.factors_source == "an SVD of the base model"
    assert opened.basis.fingerprint == basis.fingerprint and opened.lora.basis_dtype == basis_dtype


FINGERPRINTS_IN_A_FRESH_PROCESS = """
import sys, torch
from shared.base_models import DEFAULT_MODEL, load_base_model
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import compute_basis
torch.set_num_threads(int(sys.argv[1]))
model = load_base_model(DEFAULT_MODEL, "seq-cls")
print(" ".join(compute_basis(model, LoraXSConfig(rank=16, basis_dtype=d)).fingerprint for d in ("fp32", "fp16", "bf16")))
"""


@pytest.mark.slow
def test_the_packaged_minilm_factors_are_the_same_bits_in_every_process_and_thread_count():
    """What lets a device derive the factors instead of downloading them: the canonical recipe on
    the packaged MiniLM's 24 target weights (rank 16, every basis dtype) gives the same fingerprint
    in this process at 1 and 2 torch threads and in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    from shared.base_models import DEFAULT_MODEL, load_base_model
    from shared.loraxs.model import compute_basis

    model = load_base_model(DEFAULT_MODEL, "seq-cls")
    dtypes = ("fp32", "fp16", "bf16")
    threads = torch.get_num_threads()
    try:
        seen = []
        for n in (1, 2):
            torch.set_num_threads(n)
            seen.append(tuple(compute_basis(model, LoraXSConfig(rank=16, basis_dtype=d)).fingerprint for d in dtypes))
    finally:
        torch.set_num_threads(threads)
    done = subprocess.run(
        [sys.executable, "-c", FINGERPRINTS_IN_A_FRESH_PROCESS, "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    seen.append(tuple(done.stdout.split()[-3:]))
    assert len(set(seen)) == 1, seen
    assert len(set(seen[0])) == 3  # fp16 and bf16 roundings are other factors, with other fingerprints
