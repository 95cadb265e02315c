"""A small federation (5 clients, tiny seeded BERT) run in-process on the real ServerApp and
ClientApp code: what travels, how it is averaged, cache loss, personal adapters, bad updates.
(tests/test_simulation.py runs the same through Ray.)"""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import Array

from client.app import make_client_app
from client.node_state import BASIS_INFO, FEDERATION_PERSONAL_ADAPTER, PERSONAL_INFO, PERSONAL_RECORD
from server.federation import run_federation
from server.traffic import wire_bytes
from shared.artifacts import open_adapter as open_adapter_module
from shared.artifacts.adapter_file import load_adapter
from shared.artifacts.basis_file import load_basis
from shared.artifacts.cache import STATE_FOLDER
from shared.federation.node_data import shifted_partitions, simulated_node_data
from shared.federation.protocol import ARRAYS, BASIS, METRICS, STACKED_R, STATUS, payload_bytes
from shared.loraxs.basis import Basis
from tests.helpers import NUM_CLIENTS, RecordingGrid, make_config, run_recorded, write_word_reviews

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared_run(tiny_bert_dir, reviews_dir, tmp_path_factory):
    """One 3-round run that several tests read: 3 of 5 clients train per round, every client
    evaluates (personal adapters on), unequal client sizes (dirichlet)."""
    config = make_config(
        tiny_bert_dir,
        reviews_dir,
        tmp_path_factory.mktemp("shared") / "run",
        num_server_rounds=3,
        fraction_train=0.6,
        fraction_evaluate=1.0,
        partition="dirichlet",
        dirichlet_alpha=1.0,
        personalize="finetune",
        personal_steps=3,
    )
    personal_at_train = {}

    def look_at_personal_state(grid, message):
        if message.metadata.message_type == "train":
            state = grid.contexts[message.metadata.dst_node_id].state
            if PERSONAL_INFO in state:
                key = (message.content["config"]["server-round"], message.metadata.dst_node_id)
                personal_at_train[key] = (
                    int(state[PERSONAL_INFO]["round"]),
                    {k: v.numpy().copy() for k, v in state[PERSONAL_RECORD].items()},
                )

    report, grid = run_recorded(config, before=look_at_personal_state)
    return config, report, grid, personal_at_train


def test_each_client_derives_the_factors_once_and_uploads_are_payload_plus_framing(shared_run):
    config, report, grid, _ = shared_run

    recipes = [m.metadata.dst_node_id for m, _ in grid.log if "basis-model" in m.content["config"]]
    assert sorted(recipes) == sorted(grid.get_node_ids())  # every node once, final evaluation included
    assert not any(BASIS in m.content for m, _ in grid.log)  # basis-delivery derive: nothing shipped
    derived = [r for _, r in grid.log if r.content[STATUS].get("factors") == "derived"]
    assert len(derived) == NUM_CLIENTS
    final = report["final"]
    assert (final["factors_derived"], final["factors_shipped"], final["recipes_sent"]) == (5, 0, 5)
    assert (final["clients_reached"], final["max_bases_per_client"], final["basis_bytes_down_total"]) == (5, 0, 0)
    basis, _ = load_basis(f"{config.out_dir}/basis.safetensors")
    for context in grid.contexts.values():  # what every node derived is what the server has
        assert context.state[BASIS_INFO]["fingerprint"] == basis.fingerprint

    adapter_bytes = final["adapter_payload_bytes"]
    assert adapter_bytes == 4 * (8 * 4 * 4 + 2 * 32 + 2)  # 8 R (4x4) + head (2x32 + 2), fp32
    for entry in report["rounds"]:
        train = grid.exchanges(entry["round"], "train")
        assert entry["clients_trained"] == len(train) == 3
        sizes = [wire_bytes(reply) for _, reply in train]
        for (_, reply), size in zip(train, sizes):
            assert payload_bytes(reply.content[ARRAYS]) == adapter_bytes
            assert 0 < size - adapter_bytes < 4096  # headers, ids, metrics: bounded framing
        assert entry["bytes_up_per_client"] == round(sum(sizes) / 3, 1)
        both = train + grid.exchanges(entry["round"], "evaluate")
        assert entry["bytes_up"] == sum(wire_bytes(r) for _, r in both)
        assert entry["bytes_down"] == sum(wire_bytes(m) for m, _ in both)
        assert entry["basis_bytes_down"] == sum(wire_bytes(m.content[BASIS]) for m, _ in both if BASIS in m.content)
    ups = [r["bytes_up_per_client"] for r in report["rounds"]]
    assert len(set(ups[1:])) == 1 and 0 < ups[0] - ups[1] < 64  # round 1: status says "factors": "derived"
    assert report["rounds"][0]["factors_derived"] > 0 and report["rounds"][1]["factors_derived"] == 0


def test_global_r_is_the_weighted_mean_of_the_clients_r_exact_in_delta_w(shared_run):
    config, report, grid, _ = shared_run
    updates = [(r.content[ARRAYS], r.content[METRICS]["num-examples"]) for _, r in grid.exchanges(1, "train")]
    weights = np.array([n for _, n in updates], dtype=np.float64)
    assert len(set(weights)) > 1  # the weighting matters
    sent_next = grid.exchanges(2, "train")[0][0].content[ARRAYS]
    for key in sent_next.keys():
        mean = sum(w * a[key].numpy().astype(np.float64) for (a, _), w in zip(updates, weights)) / weights.sum()
        np.testing.assert_allclose(sent_next[key].numpy(), mean, rtol=0, atol=1e-6)
        plain_mean = np.mean([a[key].numpy() for a, _ in updates], axis=0)
        assert np.abs(plain_mean - mean).max() > 1e-5  # so the check above can tell them apart

    basis, _ = load_basis(f"{config.out_dir}/basis.safetensors")
    name = next(iter(basis.factors))
    index = list(basis.factors).index(name)
    lora_B, lora_A = basis.factors[name]
    scale = config.lora_alpha / config.rank
    deltas = [scale * lora_B @ torch.from_numpy(a[STACKED_R].numpy()[index]) @ lora_A for a, _ in updates]
    mean_delta = sum(w * d.double() for d, w in zip(deltas, weights)) / weights.sum()
    global_delta = scale * lora_B @ torch.from_numpy(sent_next[STACKED_R].numpy()[index]) @ lora_A
    torch.testing.assert_close(global_delta.double(), mean_delta, rtol=0, atol=1e-6)

    state, meta = load_adapter(f"{config.out_dir}/global_adapter.safetensors")
    assert meta.extra["round"] == "3" and meta.basis_fingerprint == basis.fingerprint


def test_a_client_that_lost_its_cache_gets_the_factors_again_in_the_same_round(config):
    victim = {}

    def wipe_before_round_two(grid, message):
        node = message.metadata.dst_node_id
        if message.content["config"]["server-round"] == 2 and not victim:
            victim["node"] = node
            grid.contexts[node].state.clear()  # the node's cache is gone

    report, grid = run_recorded(config, before=wipe_before_round_two)
    node = victim["node"]
    to_victim = [(m, r) for m, r in grid.exchanges(2, "train") if m.metadata.dst_node_id == node]
    assert len(to_victim) == 2
    (first, unknown), (again, update) = to_victim
    assert BASIS not in first.content and unknown.content[STATUS]["error"] == "unknown-fingerprint"
    assert BASIS in again.content and ARRAYS in update.content
    assert report["rounds"][1]["bases_resent"] == 1
    assert report["rounds"][1]["clients_trained"] == NUM_CLIENTS
    assert (report["final"]["factors_derived"], report["final"]["factors_shipped"]) == (NUM_CLIENTS, 1)


def test_a_node_whose_derived_factors_differ_is_shipped_them_and_the_round_is_whole(config, monkeypatch):
    """The fallback: the first node to derive gets factors one float32 ulp off (as another
    machine's SVD might); it answers unknown-fingerprint, is shipped the bundle, and trains."""
    derive = open_adapter_module.compute_basis
    calls = []

    def one_ulp_off_the_first_time(model, lora):
        basis = derive(model, lora)
        calls.append(1)
        if len(calls) > 1:
            return basis
        name = next(iter(basis.factors))
        lora_B, lora_A = basis.factors[name]
        lora_B = lora_B.clone()
        lora_B[0, 0] = torch.nextafter(lora_B[0, 0], torch.tensor(float("inf")))
        return Basis(basis.rank, {**basis.factors, name: (lora_B, lora_A)})

    monkeypatch.setattr(open_adapter_module, "compute_basis", one_ulp_off_the_first_time)
    report, grid = run_recorded(replace(config, final_eval_fraction=0.0))
    victim = grid.exchanges(1, "train")[0][0].metadata.dst_node_id
    to_victim = [(m, r) for m, r in grid.exchanges(1, "train") if m.metadata.dst_node_id == victim]
    (recipe, unknown), (bundle, update) = to_victim
    assert "basis-model" in recipe.content["config"] and BASIS not in recipe.content
    assert (unknown.content[STATUS]["error"], unknown.content[STATUS]["factors"]) == ("unknown-fingerprint", "mismatch")
    assert BASIS in bundle.content and ARRAYS in update.content
    first = report["rounds"][0]
    assert (first["clients_trained"], first["bases_resent"], first["rejected_updates"]) == (NUM_CLIENTS, 1, 0)
    assert (first["factors_derived"], first["factors_shipped"]) == (NUM_CLIENTS - 1, 1)
    assert report["rounds"][1]["clients_trained"] == NUM_CLIENTS  # it keeps the shipped factors
    basis, _ = load_basis(f"{config.out_dir}/basis.safetensors")
    assert grid.contexts[victim].state[BASIS_INFO]["fingerprint"] == basis.fingerprint


@pytest.mark.parametrize("basis_dtype, wire_dtype", [("fp32", "float32"), ("fp16", "float16"), ("bf16", "uint16")])
def test_shipped_factors_travel_in_basis_dtype_and_everyone_uses_the_rounded_ones(config, basis_dtype, wire_dtype):
    shipped = replace(
        config, basis_delivery="ship", basis_dtype=basis_dtype, num_server_rounds=1, final_eval_fraction=0.0
    )
    report, grid = run_recorded(shipped)
    bundles = [m.content[BASIS] for m, _ in grid.log if BASIS in m.content]
    assert len(bundles) == NUM_CLIENTS and not any("basis-model" in m.content["config"] for m, _ in grid.log)
    assert {a.dtype for bundle in bundles for a in bundle.values()} == {wire_dtype}
    basis, _ = load_basis(f"{config.out_dir}/basis.safetensors")
    assert payload_bytes(bundles[0]) == basis.num_bytes() * {"fp32": 4, "fp16": 2, "bf16": 2}[basis_dtype] // 4
    rounding = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[basis_dtype]
    for lora_B, lora_A in basis.factors.values():  # the server's own factors are the rounded ones
        assert torch.equal(lora_B.to(rounding).float(), lora_B) and torch.equal(lora_A.to(rounding).float(), lora_A)
    for context in grid.contexts.values():
        assert context.state[BASIS_INFO]["fingerprint"] == basis.fingerprint
    final = report["final"]
    assert (final["factors_shipped"], final["factors_derived"], final["max_bases_per_client"]) == (5, 0, 1)
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS


def test_personal_adapters_persist_across_rounds_and_never_travel(shared_run):
    config, report, grid, personal_at_train = shared_run
    trained_later = [(r, node) for r, node in personal_at_train if r >= 2]
    assert len(trained_later) == 6  # 3 clients in rounds 2 and 3, each held a personal adapter
    for server_round, node in trained_later:
        kept_round, _ = personal_at_train[(server_round, node)]
        assert kept_round == server_round - 1  # derived at the last evaluation, kept since
    for message, reply in grid.exchanges(kind="train"):
        assert set(reply.content.keys()) == {ARRAYS, METRICS, STATUS}
        upload = reply.content[ARRAYS]
        assert list(upload.keys()) == [STACKED_R, "classifier.weight", "classifier.bias"]
        key = (message.content["config"]["server-round"], message.metadata.dst_node_id)
        if key in personal_at_train:
            _, personal = personal_at_train[key]
            assert not np.allclose(upload["classifier.weight"].numpy(), personal["classifier.weight"])
            stacked = np.stack([v for k, v in personal.items() if k.endswith("lora_R")])
            assert not np.allclose(upload[STACKED_R].numpy(), stacked)
    for context in grid.contexts.values():
        assert int(context.state[PERSONAL_INFO]["round"]) == 3  # re-derived from the newest global
    assert all(r["clients_evaluated"] == NUM_CLIENTS for r in report["rounds"])
    assert all(0.0 <= r["accuracy_personalized"] <= 1.0 for r in report["rounds"])
    assert 0.0 <= report["final"]["accuracy_personalized"] <= 1.0


def test_bad_updates_are_rejected_with_a_reason_and_the_round_goes_on(config, caplog):
    honest = make_client_app(config)

    def client_app(message, context):
        reply = honest(message, context)
        part = context.node_config["partition-id"]
        if message.metadata.message_type != "train" or part > 2:
            return reply
        arrays = reply.content[ARRAYS]
        if part == 0:
            arrays[STACKED_R] = Array(np.full(arrays[STACKED_R].shape, np.nan, np.float32))
        elif part == 1:
            arrays["classifier.bias"] = Array(np.zeros(3, np.float32))
        else:
            reply.content[STATUS]["fingerprint"] = "0" * 64
        return reply

    with caplog.at_level(logging.WARNING, logger="flwr"):
        report, grid = run_recorded(config, client_app=client_app)
    reasons = [r.getMessage() for r in caplog.records if "rejected the update" in r.getMessage()]
    assert len(reasons) == 3 * config.num_server_rounds
    assert any("NaN or Inf" in r for r in reasons)
    assert any("classifier.bias has shape (3,)" in r for r in reasons)
    assert any("belongs to basis 000000000000" in r for r in reasons)
    assert [r["clients_trained"] for r in report["rounds"]] == [2, 2]
    assert [r["rejected_updates"] for r in report["rounds"]] == [3, 3]
    state, _ = load_adapter(f"{config.out_dir}/global_adapter.safetensors")  # checks finiteness
    assert all(torch.isfinite(t).all() for t in state.values())


def test_fp16_updates_travel_in_half_precision(config):
    half = replace(config, update_dtype="fp16", num_server_rounds=1)
    report, grid = run_recorded(half)
    for message, reply in grid.exchanges(1, "train"):
        assert {a.dtype for a in message.content[ARRAYS].values()} == {"float16"}
        assert {a.dtype for a in reply.content[ARRAYS].values()} == {"float16"}
        assert payload_bytes(reply.content[ARRAYS]) == report["final"]["adapter_payload_bytes"] == 2 * (8 * 16 + 66)
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS


def deployment_grid(config, folders):
    grid = RecordingGrid(config)
    for context, folder in zip(grid.contexts.values(), folders):
        context.node_config = {"data-dir": str(folder)}
    return grid


def test_deployment_nodes_keep_factors_and_personal_adapter_on_disk(config, tmp_path):
    folders = [write_word_reviews(tmp_path / f"device{i}", 30, seed=i) for i in range(2)]
    config = replace(
        config,
        num_clients=2,
        dataset="",
        labels="neg,pos",
        personalize="finetune",
        fraction_evaluate=1.0,
        personal_steps=2,
    )
    grid = deployment_grid(config, folders)
    report = run_federation(grid, config)
    basis, _ = load_basis(f"{config.out_dir}/basis.safetensors")
    for folder, context in zip(folders, grid.contexts.values()):
        assert (folder / ".loraxs" / "basis" / f"{basis.fingerprint}.safetensors").is_file()
        _, meta = load_adapter(folder / STATE_FOLDER / FEDERATION_PERSONAL_ADAPTER)
        assert (meta.extra["round"], meta.extra["kind"]) == ("2", "personal")
        assert len(context.state) == 0  # nothing kept in memory between messages
    assert (report["final"]["max_bases_per_client"], report["final"]["factors_derived"]) == (0, 2)  # derived, on disk
    assert report["rounds"][-1]["accuracy_global"] is None  # no server-side data in deployment
    assert report["final"]["accuracy_global"] == report["final"]["accuracy_global_clients"]


def test_a_node_with_other_labels_answers_with_one_clear_error(config, tmp_path, caplog):
    folders = [
        write_word_reviews(tmp_path / "ok", 30),
        write_word_reviews(tmp_path / "odd", 30, labels=("bad", "good")),
    ]
    config = replace(config, num_clients=2, dataset="", labels="neg,pos", num_server_rounds=1, final_eval_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = run_federation(deployment_grid(config, folders), config)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures and "labels ['bad', 'good'] differ from the federation's ['neg', 'pos']" in failures[0]
    assert report["rounds"][0]["clients_trained"] == 1


def test_concept_shift_flips_the_labels_of_a_seeded_fifth_of_the_clients(config):
    shifted_config = replace(config, scenario="concept-shift")
    shifted = shifted_partitions(shifted_config)
    assert len(shifted) == 1 and shifted == shifted_partitions(shifted_config)
    assert shifted_partitions(config) == frozenset()
    for part in range(NUM_CLIENTS):
        plain, maybe = simulated_node_data(config, part), simulated_node_data(shifted_config, part)
        assert maybe.shifted == (part in shifted)
        assert plain.train["text"] == maybe.train["text"]
        expected = [1 - y for y in plain.test["label"]] if part in shifted else plain.test["label"]
        assert maybe.test["label"] == expected
