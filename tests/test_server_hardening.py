"""The server against hostile or failing clients, reproducible sampling, and resume (in process,
tiny model): a bad reply is one logged rejection, never the end of the run."""

import logging
import random
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from client.app import make_client_app
from server.checkpoint import CHECKPOINT, Checkpoint
from server.federation import run_federation
from shared.errors import LoraXSError
from shared.federation.node_data import simulated_node_data
from shared.federation.protocol import ARRAYS, METRICS, STACKED_R
from tests.helpers import NUM_CLIENTS, RecordingGrid, lying_client

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ShuffledIdsGrid(RecordingGrid):
    """Node ids drawn at random per grid, as Flower's simulation does."""

    def __init__(self, config, id_seed, **kwargs):
        super().__init__(config, **kwargs)
        ids = random.Random(id_seed).sample(range(10**6, 10**7), len(self.contexts))
        self.contexts = {new: ctx for new, ctx in zip(ids, self.contexts.values())}
        for new, ctx in self.contexts.items():
            ctx.node_id = new

    def trained_partitions(self, server_round):
        return sorted(self.partition_of(m.metadata.dst_node_id) for m, _ in self.exchanges(server_round, "train"))


def test_arrays_of_the_wrong_record_type_are_rejected_not_fatal(config, caplog):
    def lie(reply, part, kind):
        if kind != "train" or part > 1:
            return
        arrays = reply.content[ARRAYS]
        values = {k: 0.5 for k in arrays.keys()}  # same keys, right fingerprint, wrong record type
        reply.content[ARRAYS] = ConfigRecord(values) if part == 0 else MetricRecord(values)

    one_round = replace(config, num_server_rounds=1, final_eval_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = run_federation(RecordingGrid(one_round, client_app=lying_client(one_round, lie)), one_round)
    reasons = [r.getMessage() for r in caplog.records if "rejected the update" in r.getMessage()]
    assert len(reasons) == 2 and all("not an ArrayRecord" in r for r in reasons)
    assert report["rounds"][0]["rejected_updates"] == 2
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS - 2


def test_claimed_example_counts_are_bounded_and_bad_metrics_rejected(config, caplog):
    def lie(reply, part, kind):
        metrics = reply.content[METRICS]
        if kind == "train" and part == 0:
            metrics["num-examples"] = 10**12  # would make the mean its own update
        elif kind == "train" and part == 1:
            metrics["num-examples"] = 2.5
        elif kind == "evaluate" and part == 2:
            metrics["accuracy-global"] = 1e9

    one_round = replace(config, num_server_rounds=1, final_eval_fraction=1.0)
    grid = RecordingGrid(one_round, client_app=lying_client(one_round, lie))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = run_federation(grid, one_round)
    entry = report["rounds"][0]
    assert (entry["clipped_weights"], entry["rejected_updates"], entry["clients_trained"]) == (1, 1, NUM_CLIENTS - 1)
    assert report["final"]["clients_final_evaluation"] == NUM_CLIENTS - 1
    assert any("outside [0, 1]" in r.getMessage() for r in caplog.records)

    # The mean is weighted by what the partitions really hold (independent computation).
    weighted, total = 0.0, 0
    for message, reply in grid.exchanges(1, "train"):
        part = grid.partition_of(message.metadata.dst_node_id)
        if part == 1:
            continue
        n = len(simulated_node_data(one_round, part).train)
        weighted = weighted + n * reply.content[ARRAYS][STACKED_R].numpy().astype(np.float64)
        total += n
    saved = Checkpoint(one_round.out_dir).arrays[STACKED_R].numpy()
    np.testing.assert_allclose(saved, weighted / total, rtol=1e-5, atol=1e-7)


def test_same_seed_samples_the_same_partitions_whatever_the_node_ids(config):
    sampled = replace(config, num_server_rounds=3, fraction_train=0.4, final_eval_fraction=0.0)
    grids = []
    for id_seed in (1, 2):
        out = replace(sampled, out_dir=f"{config.out_dir}-{id_seed}")
        grid = ShuffledIdsGrid(out, id_seed)
        run_federation(grid, out)
        grids.append(grid)
    first, second = ([g.trained_partitions(r) for r in (1, 2, 3)] for g in grids)
    assert first == second and all(len(p) == 2 for p in first)
    assert len({tuple(p) for p in first}) > 1  # not the same two every round


def test_a_resumed_run_equals_an_uninterrupted_one(config):
    """Two rounds, then a new process's worth of state (other node ids) resumes to four."""
    full = replace(
        config, num_server_rounds=4, fraction_train=0.6, final_eval_fraction=0.0, out_dir=f"{config.out_dir}-full"
    )
    whole = run_federation(ShuffledIdsGrid(full, 1), full)

    part = replace(full, num_server_rounds=2, out_dir=f"{config.out_dir}-part")
    run_federation(ShuffledIdsGrid(part, 2), part)
    assert Checkpoint(part.out_dir).round == 2
    resumed_config = replace(full, out_dir="", resume_from=part.out_dir)
    resumed = run_federation(ShuffledIdsGrid(resumed_config, 3), resumed_config)

    assert [r["accuracy_global"] for r in resumed["rounds"]] == [r["accuracy_global"] for r in whole["rounds"]]
    assert [r["clients_trained"] for r in resumed["rounds"]] == [3, 3, 3, 3]
    a, b = Checkpoint(full.out_dir), Checkpoint(part.out_dir)
    assert b.round == 4
    for key in a.arrays.keys():
        assert np.array_equal(a.arrays[key].numpy(), b.arrays[key].numpy()), key


def test_resuming_with_another_config_is_refused(config):
    first = replace(config, num_server_rounds=1, final_eval_fraction=0.0)
    run_federation(RecordingGrid(first), first)
    other = replace(first, lr=0.5, num_server_rounds=2, out_dir="", resume_from=first.out_dir)
    with pytest.raises(LoraXSError, match="cannot resume: the config differs .*lr 0.01 -> 0.5"):
        run_federation(RecordingGrid(other), other)


def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(LoraXSError, match="checkpoint"):
        Checkpoint(tmp_path)


def test_failing_clients_are_counted_and_every_round_completes(config):
    from simulations import failing_clients

    shaky = replace(
        config,
        num_server_rounds=3,
        fail_rate=0.5,
        seed=2,
        round_timeout=0.5,
        min_train_nodes=1,
        final_eval_fraction=0.0,
    )
    kinds = [failing_clients.failure_kind(shaky, r, p, "train") for r in (1, 2, 3) for p in range(NUM_CLIENTS)]
    assert {"crash", "timeout", "garbage"} <= set(kinds)  # this seed exercises every kind
    app = failing_clients.failing_client_app(make_client_app(shaky), shaky)
    report = run_federation(failing_clients.SilencedGrid(RecordingGrid(shaky, client_app=app), shaky), shaky)
    for r, entry in enumerate(report["rounds"], start=1):
        drawn = [failing_clients.failure_kind(shaky, r, p, "train") for p in range(NUM_CLIENTS)]
        assert entry["failures"].get("train-error", 0) == drawn.count("crash")
        assert entry["failures"].get("train-timeout", 0) == drawn.count("timeout")
        assert entry["rejected_updates"] == drawn.count("garbage")
        assert entry["clients_trained"] == drawn.count(None)
        assert entry["skipped"] == ("" if drawn.count(None) else entry["skipped"])


def test_a_round_with_too_few_good_updates_is_skipped_and_the_adapter_kept(config, caplog):
    def lie(reply, part, kind):
        if kind == "train" and part > 0:
            reply.content[METRICS]["num-examples"] = -1

    strict = replace(config, num_server_rounds=1, min_train_nodes=2, final_eval_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report = run_federation(RecordingGrid(strict, client_app=lying_client(strict, lie)), strict)
    assert "fewer than min-train-nodes 2" in report["rounds"][0]["skipped"]
    assert any("skipped, the global adapter stays" in r.getMessage() for r in caplog.records)
