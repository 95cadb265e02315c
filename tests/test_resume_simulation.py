"""A real `flower-simulation` killed with SIGKILL after a round's checkpoint, then resumed:
the report's accuracies, the final adapter and the books (clients reached, factors derived and
shipped) equal an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import CHECKPOINT, Checkpoint
from tests.helpers import tagged_run, write_word_reviews

ROOT = Path(__file__).resolve().parents[1]


def command(reviews, model, out, *extra):
    return [
        sys.executable,
        "-m",
        "simulations.cli",
        "--num-clients",
        "4",
        "--rounds",
        "3",
        "--fraction",
        "0.5",
        "--partition",
        "iid",
        "--dataset",
        str(reviews),
        "--model",
        model,
        "--rank",
        "4",
        *(["--out", str(out)] if out else []),
        "--no-progress",
        "--run-config",
        "final-eval-fraction=0.0 lr=0.01 head-lr=0.01 batch-size=8 eval-max-examples=32",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_after_round_one_then_resume_equals_an_uninterrupted_run(tiny_bert_dir, tmp_path):
    reviews = write_word_reviews(tmp_path / "reviews", 120)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    whole = tagged_run(command(reviews, tiny_bert_dir, tmp_path / "whole"), timeout=400)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    child = subprocess.Popen(
        command(reviews, tiny_bert_dir, out),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (out / CHECKPOINT).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and every Ray process it started
    child.wait(30)
    assert Checkpoint(out).round < 3, "killed too late to test a resume"

    resumed = tagged_run(command(reviews, tiny_bert_dir, None, "--resume", str(out)), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    assert [r["accuracy_global"] for r in b["rounds"]] == [r["accuracy_global"] for r in a["rounds"]]
    assert [r["loss_global"] for r in b["rounds"]] == [r["loss_global"] for r in a["rounds"]]
    books = ("clients_reached", "factors_derived", "factors_shipped")  # each node counted once, none shipped
    assert [b["final"][k] for k in books] == [a["final"][k] for k in books], (a["final"], b["final"])
    assert b["final"]["factors_shipped"] == 0 and b["final"]["clients_reached"] <= 4
    first, second = Checkpoint(tmp_path / "whole"), Checkpoint(out)
    assert first.round == second.round == 3
    for key in first.arrays.keys():
        assert np.array_equal(first.arrays[key].numpy(), second.arrays[key].numpy()), key


# -- the books of a resumed run, without Ray: node ids change, partitions do not -------------------


def test_traffic_books_are_kept_by_partition_across_a_resume(tmp_path):
    from flwr.app import Array, ArrayRecord

    from server.checkpoint import save_checkpoint
    from server.traffic import TrafficMeter
    from shared.federation.run_config import FederationConfig

    before = TrafficMeter()
    before.nodes_contacted.update([101, 102])
    before.nodes_derived.update([101])
    before.bases_per_node[102] = 1
    arrays = ArrayRecord({"x": Array(np.zeros(2, np.float32))})
    save_checkpoint(tmp_path, 1, arrays, FederationConfig(), {}, before, {}, {101: 0, 102: 1, 103: 2, 104: 3})

    after = TrafficMeter()
    new_ids = {201: 0, 202: 1, 203: 2, 204: 3}  # the same partitions, served by new node ids
    Checkpoint(tmp_path).restore_traffic(after, new_ids)
    assert after.nodes_contacted == {201, 202} and after.nodes_derived == {201}
    assert dict(after.bases_per_node) == {202: 1}
    after.nodes_contacted.update(new_ids)  # the resumed rounds reach every node
    assert len(after.nodes_contacted) == 4  # not 6: each node counted once


@pytest.mark.parametrize("recipe", [{"recipe-model": "m"}, None], ids=["derive", "ship"])
def test_a_resumed_strategy_sends_the_recipe_again_and_ships_only_where_it_shipped(recipe):
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from server.strategy import LoraXSStrategy
    from shared.federation.protocol import BASIS, CONFIG

    def strategy():
        return LoraXSStrategy(ArrayRecord(), "f" * 64, "fp32", (), recipe=recipe, min_available_nodes=4)

    first = strategy()
    first.partitions = {101: 0, 102: 1, 103: 2, 104: 3}
    for node in first.partitions:
        first.delivery.attach(node, RecordDict({CONFIG: ConfigRecord({})}))
    first.delivery.lost([104])  # partition 3 could not derive them: it is shipped the bundle
    state = first.state()

    resumed = strategy()
    new_ids = {201: 0, 202: 1, 203: 2, 204: 3}  # partition discovery in the new process
    resumed.discover_partitions = lambda grid: setattr(resumed, "partitions", dict(new_ids))
    resumed.restore(state, grid=None)
    sent = {}
    for node in new_ids:
        content = RecordDict({CONFIG: ConfigRecord({})})
        resumed.delivery.attach(node, content)
        sent[node] = "bundle" if BASIS in content else "recipe" if "recipe-model" in content[CONFIG] else None
    if recipe is not None:  # a simulated node's factors die with its process: it derives them again
        assert sent == {201: "recipe", 202: "recipe", 203: "recipe", 204: "bundle"}
    else:  # ship: the partitions that held them are trusted to hold them still
        assert sent == {201: None, 202: None, 203: None, 204: "bundle"}
