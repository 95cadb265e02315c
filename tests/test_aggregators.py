"""Any Flower aggregator inside the LoRA-XS layer; Flower's DP wrappers; reproducible runs."""

import math
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM

from server.aggregators import aggregator_state, make_aggregator, restore_aggregator
from server.federation import run_federation
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, STACKED_R
from shared.federation.run_config import STRATEGIES, FederationConfig
from simulations.in_process import InProcessGrid
from tests.helpers import RecordingGrid, lying_client

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def process_identity():
    """Messages take their run and sender from the process identity (an in-process grid sets it)."""
    InProcessGrid(lambda message, context: message, 1)


def replies(records: list[dict], weights: list[int]) -> list[Message]:
    out = []
    for arrays, weight in zip(records, weights):
        content = RecordDict(
            {
                ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                METRICS: MetricRecord({"num-examples": weight}),
            }
        )
        out.append(Message(content, dst_node_id=0, message_type="train"))
    return out


def test_fedavgm_on_r_equals_fedavgm_on_delta_w():
    """delta W = s B R A is linear in R: two rounds of server momentum on R give the delta W
    that the same two rounds computed on delta W give."""
    out_dim, in_dim, r, s = 12, 10, 4, 0.5
    b, a = RNG.standard_normal((out_dim, r)), RNG.standard_normal((r, in_dim))  # (out, r), (r, in)
    to_w = lambda rr: s * b @ rr @ a  # (r, r) -> (out, in)
    on_r = FedAvgM(server_learning_rate=0.7, server_momentum=0.9, min_available_nodes=1, min_train_nodes=1)
    on_w = FedAvgM(server_learning_rate=0.7, server_momentum=0.9, min_available_nodes=1, min_train_nodes=1)
    global_r = RNG.standard_normal((r, r))
    global_w = to_w(global_r)
    for _ in range(2):
        on_r.configure_train(1, ArrayRecord({"R": Array(global_r)}), ConfigRecord(), _NoGrid())
        on_w.configure_train(1, ArrayRecord({"W": Array(global_w)}), ConfigRecord(), _NoGrid())
        clients = [global_r + 0.1 * RNG.standard_normal((r, r)) for _ in range(3)]
        weights = [5, 9, 2]
        new_r, _ = on_r.aggregate_train(1, replies([{"R": c} for c in clients], weights))
        new_w, _ = on_w.aggregate_train(1, replies([{"W": to_w(c)} for c in clients], weights))
        global_r, global_w = new_r["R"].numpy(), new_w["W"].numpy()
        np.testing.assert_allclose(to_w(global_r), global_w, rtol=1e-10, atol=1e-10)


class _NoGrid:
    def get_node_ids(self):
        return [1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_flower_strategy_runs_a_federation(strategy, config):
    chosen = replace(
        config,
        strategy=strategy,
        num_server_rounds=2,
        final_eval_fraction=0.0,
        server_lr=0.5 if strategy in ("fedadam", "fedyogi", "fedadagrad") else 1.0,
        proximal_mu=0.1,
        krum_malicious=1,
    )
    report = run_federation(RecordingGrid(chosen), chosen)
    assert report["final"]["strategy"] == strategy
    assert all(r["skipped"] == "" and r["clients_trained"] == chosen.num_clients for r in report["rounds"])
    assert math.isfinite(report["final"]["accuracy_global"])


def test_fedprox_sends_mu_and_the_client_trains_closer_to_the_global_adapter(config):
    """The proximal term pulls the update toward where the round started."""
    moved = {}
    for mu in (0.0, 100.0):
        chosen = replace(
            config, strategy="fedprox", proximal_mu=mu, num_server_rounds=1, final_eval_fraction=0.0, lr=0.05
        )
        grid = RecordingGrid(chosen)
        run_federation(grid, chosen)
        (message, reply), *_ = grid.exchanges(1, "train")
        assert message.content[CONFIG]["proximal-mu"] == mu
        moved[mu] = np.abs(reply.content[ARRAYS][STACKED_R].numpy() - message.content[ARRAYS][STACKED_R].numpy()).sum()
    assert moved[100.0] < 0.5 * moved[0.0]


def test_server_side_dp_survives_a_failing_client_and_reports_the_budget(config):
    """Flower's DP wrapper skips a round when any reply is an error; the layer never hands it
    one, so the round goes on with the good updates, and epsilon grows round by round."""

    def crash(reply, part, kind):
        if kind == "train" and part == 0:
            raise RuntimeError("this device fails")

    private = replace(
        config,
        dp="server-fixed",
        dp_noise_multiplier=1.0,
        dp_clipping_norm=0.5,
        num_server_rounds=2,
        final_eval_fraction=0.0,
    )
    report = run_federation(RecordingGrid(private, client_app=lying_client(private, crash)), private)
    assert [r["clients_trained"] for r in report["rounds"]] == [private.num_clients - 1] * 2
    assert all(r["skipped"] == "" for r in report["rounds"])
    privacy = report["final"]["privacy"]
    assert privacy["noise_multiplier"] == 1.0 and privacy["clipping_norm"] == 0.5
    assert privacy["releases"] == 2 and 0 < privacy["epsilon"] < math.inf and privacy["delta"] == private.dp_delta


def test_client_side_dp_clips_each_update_on_the_device(config):
    """fixedclipping_mod on the device: every uploaded delta has L2 norm <= the clipping norm
    (the first message, which carries the factors too, included)."""
    clip = 1e-3
    private = replace(
        config,
        dp="client-fixed",
        dp_noise_multiplier=0.0,
        dp_clipping_norm=clip,
        num_server_rounds=2,
        final_eval_fraction=0.0,
        lr=0.05,
    )
    grid = RecordingGrid(private)
    report = run_federation(grid, private)
    assert all(r["clients_trained"] == private.num_clients for r in report["rounds"])
    for message, reply in grid.exchanges(kind="train"):
        assert message.content[CONFIG]["clipping_norm"] == clip
        sent, got = message.content[ARRAYS], reply.content[ARRAYS]
        norm = math.sqrt(sum(float(((got[k].numpy().astype(np.float64) - sent[k].numpy()) ** 2).sum()) for k in sent))
        assert norm <= clip * (1 + 1e-4)


def test_fedadam_state_survives_a_checkpoint_bit_for_bit():
    cfg = FederationConfig(strategy="fedadam", server_lr=0.1)
    adam = make_aggregator(cfg)
    start = {"R": RNG.standard_normal((3, 4, 4)).astype(np.float32)}
    adam.configure_train(1, ArrayRecord({k: Array(v) for k, v in start.items()}), ConfigRecord(), _NoGrid())
    adam.aggregate_train(1, replies([{"R": start["R"] + 0.1}, {"R": start["R"] - 0.3}], [3, 1]))
    again = make_aggregator(cfg)
    restore_aggregator(again, aggregator_state(adam))
    assert isinstance(again, FedAdam)
    for name in ("current_arrays", "m_t", "v_t"):
        for key, value in getattr(adam, name).items():
            np.testing.assert_array_equal(getattr(again, name)[key], value)
            assert getattr(again, name)[key].dtype == value.dtype


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"strategy": "fedsgd"}, "strategy must be one of"),
        ({"dp": "server-fixed", "dp_clipping_norm": 0.0}, "dp-clipping-norm > 0"),
        ({"dp": "client-fixed", "encrypt_updates": True}, "cannot be combined with encrypt-updates"),
        ({"strategy": "krum", "secure_aggregation": True}, "reveals only the mean"),
        ({"trimmed_beta": 0.5}, "trimmed-beta"),
    ],
)
def test_bad_aggregator_settings_are_one_clear_error(changes, message):
    with pytest.raises(LoraXSError, match=message):
        FederationConfig(**changes)


def test_the_same_seed_gives_the_same_report(config):
    """Sampling by partition, seeded shuffles: two runs agree to the last digit (but the wall time)."""
    chosen = replace(config, fraction_train=0.6, num_server_rounds=2, final_eval_fraction=0.6)
    first = run_federation(RecordingGrid(chosen), chosen)
    again = replace(chosen, out_dir=chosen.out_dir + "-again")
    second = run_federation(RecordingGrid(again), again)
    for report in (first, second):
        report["final"].pop("wall_seconds")
        for entry in report["rounds"]:
            entry.pop("seconds")
        report["config"].pop("out-dir")
    assert first == second


def test_malicious_clients_poison_fedavg_and_fedmedian_limits_them(config):
    """Two of five clients upload global - 10 * delta: FedAvg's step is several times larger than
    an honest one, FedMedian's stays at an honest client's size."""
    from client.app import make_client_app
    from simulations.malicious_clients import malicious_client_app, malicious_partitions

    steps = {}
    for strategy in ("fedavg", "fedmedian"):
        attacked = replace(
            config,
            strategy=strategy,
            malicious_fraction=0.4,
            num_server_rounds=2,
            final_eval_fraction=0.0,
            fraction_train=1.0,
        )
        assert len(malicious_partitions(attacked)) == 2
        grid = RecordingGrid(attacked, client_app=malicious_client_app(make_client_app(attacked), attacked))
        run_federation(grid, attacked)
        first = grid.exchanges(1, "train")[0][0].content[ARRAYS][STACKED_R].numpy()
        second = grid.exchanges(2, "train")[0][0].content[ARRAYS][STACKED_R].numpy()
        honest = [
            r.content[ARRAYS][STACKED_R].numpy() - first
            for m, r in grid.exchanges(1, "train")
            if grid.partition_of(m.metadata.dst_node_id) not in malicious_partitions(attacked)
        ]
        steps[strategy] = np.linalg.norm(second - first) / np.mean([np.linalg.norm(h) for h in honest])
    assert steps["fedavg"] > 2.0 and steps["fedmedian"] < 1.5


def test_secure_aggregation_feeds_its_mean_to_a_mean_based_aggregator(config):
    """SecAgg reveals only the mean; FedAvgM needs no more: its momentum step runs on that mean."""
    secure = replace(
        config,
        secure_aggregation=True,
        strategy="fedavgm",
        server_lr=0.5,
        server_momentum=0.5,
        num_server_rounds=2,
        final_eval_fraction=0.0,
    )
    report = run_federation(RecordingGrid(secure), secure)
    assert [r["skipped"] for r in report["rounds"]] == ["", ""]
    assert all(r["secure_aggregation"] for r in report["rounds"])
    assert math.isfinite(report["final"]["accuracy_global"])
