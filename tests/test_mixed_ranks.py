"""Mixed ranks: devices train the top-left r' x r' block of each R with the federation's scale."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from server.federation import run_federation
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, STACKED_R
from shared.federation.run_config import FederationConfig
from shared.loraxs.mixed_rank import per_entry_from_zero_padded, top_left, truncated_factors, zero_pad
from tests.helpers import RecordingGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(3)


def test_zero_padded_mean_is_exactly_the_mean_of_the_clients_delta_w():
    """Client k at rank r_k: delta W_k = s B[:, :r_k] R_k A[:r_k]; the weighted mean of
    zero_pad(R_k) gives s B mean A = the weighted mean of the delta W_k (one layer)."""
    out_dim, in_dim, rank, s = 9, 7, 6, 0.25
    b, a = RNG.standard_normal((out_dim, rank)), RNG.standard_normal((rank, in_dim))  # (out, r), (r, in)
    ranks, weights = [2, 4, 6], [3.0, 5.0, 1.0]
    blocks = [RNG.standard_normal((1, r, r)) for r in ranks]  # (1, r_k, r_k)
    delta_w = [s * b[:, :r] @ blk[0] @ a[:r] for r, blk in zip(ranks, blocks)]
    mean_w = sum(w * d for w, d in zip(weights, delta_w)) / sum(weights)
    mean_r = sum(w * zero_pad(blk, rank) for w, blk in zip(weights, blocks)) / sum(weights)  # (1, r, r)
    np.testing.assert_allclose(s * b @ mean_r[0] @ a, mean_w, rtol=1e-12, atol=1e-12)


def test_per_entry_mean_averages_each_entry_over_its_holders_only():
    ranks, weights = [1, 2], [1.0, 3.0]
    blocks = [np.full((1, 1, 1), 10.0), np.full((1, 2, 2), 2.0)]
    mean_padded = sum(w * zero_pad(blk, 3) for w, blk in zip(weights, blocks)) / sum(weights)
    global_r = np.full((1, 3, 3), -7.0)
    out = per_entry_from_zero_padded(mean_padded, ranks, weights, global_r)[0]
    assert out[0, 0] == pytest.approx((1 * 10 + 3 * 2) / 4)  # both hold it
    assert out[0, 1] == out[1, 1] == pytest.approx(2.0)  # only the rank-2 client
    assert out[2, 2] == out[0, 2] == -7.0  # nobody: the global value stays


def test_nested_factors_are_the_first_columns_and_rows():
    b, a = torch.randn(8, 4), torch.randn(4, 5)
    small_b, small_a = truncated_factors({"m": (b, a)}, 2)["m"]
    assert torch.equal(small_b, b[:, :2]) and torch.equal(small_a, a[:2])
    assert top_left(np.arange(2 * 4 * 4).reshape(2, 4, 4), 2).shape == (2, 2, 2)


@pytest.mark.parametrize("mode", ["zero-pad", "per-entry"])
def test_a_federation_of_mixed_ranks_trains_and_uploads_smaller_blocks(config, mode):
    mixed = replace(
        config,
        rank=4,
        lora_alpha=4.0,
        client_ranks="2,4",
        mixed_rank_aggregation=mode,
        num_server_rounds=2,
        final_eval_fraction=1.0,
    )
    grid = RecordingGrid(mixed)
    report = run_federation(grid, mixed)
    assert all(r["clients_trained"] == mixed.num_clients and r["skipped"] == "" for r in report["rounds"])
    for message, reply in grid.exchanges(kind="train"):
        rank = mixed.node_rank(grid.contexts[message.metadata.dst_node_id].node_config)
        sent, got = message.content[ARRAYS][STACKED_R], reply.content[ARRAYS][STACKED_R]
        assert tuple(sent.shape)[1:] == (4, 4) and tuple(got.shape)[1:] == (rank, rank)
    assert report["final"]["accuracy_global"] is not None


def test_per_entry_under_fedavgm_is_fedavgm_stepping_from_the_per_entry_mean(config, tmp_path):
    """FedAvgM with server-lr 1 and no momentum steps exactly to the mean it is given: the same
    global model as per-entry FedAvg, round after round."""
    mixed = replace(
        config,
        rank=4,
        lora_alpha=4.0,
        client_ranks="2,4",
        mixed_rank_aggregation="per-entry",
        num_server_rounds=2,
        final_eval_fraction=0.0,
    )
    plain = run_federation(RecordingGrid(mixed), replace(mixed, out_dir=str(tmp_path / "fedavg")))
    stepped = run_federation(
        RecordingGrid(mixed),
        replace(mixed, strategy="fedavgm", server_lr=1.0, server_momentum=0.0, out_dir=str(tmp_path / "fedavgm")),
    )
    for a, b in zip(plain["rounds"], stepped["rounds"]):
        assert a["skipped"] == b["skipped"] == ""
        assert a["loss_global"] == pytest.approx(b["loss_global"], abs=1e-6)
    half = run_federation(
        RecordingGrid(mixed),
        replace(mixed, strategy="fedavgm", server_lr=0.5, server_momentum=0.0, out_dir=str(tmp_path / "half")),
    )
    assert half["rounds"][0]["loss_global"] != pytest.approx(plain["rounds"][0]["loss_global"], abs=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"client_ranks": "4,32"}, "client-ranks must lie in"),
        ({"client_ranks": "4,x"}, "comma-separated integers"),
        ({"mixed_rank_aggregation": "per-entry", "strategy": "fedmedian"}, "per-entry needs a mean-based strategy"),
        ({"mixed_rank_aggregation": "per-entry", "dp": "server-fixed"}, "per-entry needs a mean-based strategy"),
    ],
)
def test_bad_mixed_rank_settings_are_one_clear_error(changes, message):
    with pytest.raises(LoraXSError, match=message):
        FederationConfig(**changes)


def test_a_small_rank_node_keeps_its_personal_adapter_on_the_nested_factors(config):
    """Personalization at r' < r: the personal adapter is r' x r' and recorded under the nested
    factors' fingerprint (as `client.run --rank` writes it), so it is found again next time."""
    from client.node_state import PERSONAL_INFO, PERSONAL_RECORD
    from shared.base_models import build_adapted_model
    from shared.federation.protocol import nested_basis

    mixed = replace(
        config,
        rank=4,
        lora_alpha=4.0,
        client_ranks="2,4",
        num_server_rounds=1,
        final_eval_fraction=1.0,
        personalize="finetune",
        personal_steps=2,
    )
    grid = RecordingGrid(mixed)
    report = run_federation(grid, mixed)
    assert report["final"]["accuracy_personalized"] is not None
    _, basis = build_adapted_model(mixed.model, mixed.task, mixed.lora_config(), mixed.label_names() or ["neg", "pos"])
    seen = set()
    for context in grid.contexts.values():
        rank = mixed.node_rank(context.node_config)
        info, record = context.state[PERSONAL_INFO], context.state[PERSONAL_RECORD]
        expected = basis if rank == mixed.rank else nested_basis(basis, rank)
        assert info["fingerprint"] == expected.fingerprint
        assert {tuple(a.shape)[-2:] for k, a in record.items() if k.endswith("lora_R")} == {(rank, rank)}
        seen.add(rank)
    assert seen == {2, 4}
