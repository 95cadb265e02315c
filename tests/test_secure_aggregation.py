"""secure-aggregation: the train step as SecAgg+ on the Message API, in-process (tiny BERT, 5
clients): the aggregate, a client lost after the key exchange, and what the server receives."""

import logging
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from client.app import make_client_app
from client.secure_stages import DELTA, _load
from server.federation import run_federation
from shared.artifacts.adapter_file import load_adapter
from shared.crypto.secagg.params import quantize
from shared.crypto.secagg.server import SecAggServer
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, CONFIG, METRICS
from shared.federation.run_config import FederationConfig
from shared.federation.sealed_update import SEALED
from shared.federation.secure_messages import MASKED_INPUT, SECAGG, UNMASK, flat
from tests.helpers import NUM_CLIENTS, RecordingGrid, make_config, run_recorded, tagged_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config(tiny_bert_dir, reviews_dir, tmp_path):
    return make_config(
        tiny_bert_dir,
        reviews_dir,
        tmp_path / "run",
        num_server_rounds=1,
        final_eval_fraction=0.0,
        partition="dirichlet",
        dirichlet_alpha=1.0,
    )


def _global(config):
    return load_adapter(f"{config.out_dir}/global_adapter.safetensors")[0]


def test_secure_aggregate_equals_the_plain_weighted_mean_within_the_quantization_error(config, tmp_path):
    plain_report, _ = run_recorded(config)
    secure_config = replace(config, out_dir=str(tmp_path / "secure"), secure_aggregation=True)
    secure_report, grid = run_recorded(secure_config)

    entry = secure_report["rounds"][0]
    secure = entry["secure_aggregation"]
    assert entry["clients_trained"] == secure["summed"] == secure["participants"] == NUM_CLIENTS
    assert secure["dropped"] == {} and entry["skipped"] == ""
    bound = secure["max_quantization_error"]
    assert 0 < bound < 1e-4
    plain, mine = _global(config), _global(secure_config)
    for name in plain:
        diff = np.abs(plain[name].numpy().astype(np.float64) - mine[name].numpy()).max()
        assert diff <= bound + 1e-6, (name, diff, bound)  # + float32 rounding of either mean
    # no train reply carries arrays, nor its keys in the clear (sealed); every client went through all four stages
    train = grid.exchanges(kind="train")
    assert all(ARRAYS not in r.content and SECAGG not in r.content and SEALED in r.content for _, r in train)
    assert all(set(r.content.keys()) == {SEALED} for m, r in grid.log if m.metadata.message_type.startswith("train."))
    kinds = [m.metadata.message_type for m, _ in grid.log]
    assert kinds.count(MASKED_INPUT) == kinds.count(UNMASK) == NUM_CLIENTS
    # stage traffic is counted; the per-client upload includes it
    assert secure["stage_bytes_up"] > 0 and secure["stage_bytes_down"] > 0
    assert (
        secure_report["final"]["bytes_up_per_client_per_round"] > plain_report["final"]["bytes_up_per_client_per_round"]
    )


def test_a_client_dropping_after_the_key_exchange_does_not_stop_the_round(config, caplog):
    secure_config = replace(config, secure_aggregation=True)
    honest = make_client_app(secure_config)
    dropped = []

    deltas = {}

    def dropping_client(message, context):
        if message.metadata.message_type == MASKED_INPUT:
            if context.node_config["partition-id"] == 0:
                dropped.append(context.node_id)
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="gone"), reply_to=message)
            if message.content[CONFIG]["server-round"] == 1:
                deltas[context.node_id] = context.state[DELTA]["x"].numpy().copy()  # kept on the client
        return honest(message, context)

    with caplog.at_level(logging.WARNING):
        report, grid = run_recorded(replace(secure_config, num_server_rounds=2), client_app=dropping_client)
    entry = report["rounds"][0]
    assert entry["skipped"] == "" and entry["clients_trained"] == NUM_CLIENTS - 1
    assert list(entry["secure_aggregation"]["dropped"]) == [str(dropped[0])]
    assert entry["failures"] == {"secagg-error": 1} and "node" in caplog.text and "dropped" in caplog.text
    # the new global adapter: the start + the plain weighted mean of the four survivors' deltas
    weights, start = {}, None
    for message, reply in grid.exchanges(server_round=1, kind="train"):
        weights[message.metadata.dst_node_id] = reply.content[METRICS]["num-examples"]
        start = flat(message.content[ARRAYS])
    total = sum(weights[n] for n in deltas)
    expected = start + sum(weights[n] * deltas[n] for n in deltas) / total
    got = flat(grid.exchanges(server_round=2, kind="train")[0][0].content[ARRAYS])  # sent in round 2
    assert len(deltas) == NUM_CLIENTS - 1
    assert np.abs(got - expected).max() <= entry["secure_aggregation"]["max_quantization_error"] + 1e-6


def test_the_server_never_holds_an_individual_clients_unmasked_delta(config, monkeypatch):
    """Everything SecAggServer receives, and every reply the driver gets, is compared with each
    client's quantized delta (recorded on the client side): no equality, no correlation."""
    received = []
    for method in ("receive_keys", "receive_shares", "receive_masked", "receive_reveal"):
        original = getattr(SecAggServer, method)

        def recording(self, node, reply, original=original):
            received.append(reply)
            return original(self, node, reply)

        monkeypatch.setattr(SecAggServer, method, recording)
    secure_config = replace(config, secure_aggregation=True)
    honest = make_client_app(secure_config)
    quantized = []

    def recording_client(message, context):
        reply = honest(message, context)
        if message.metadata.message_type == MASKED_INPUT:
            x = context.state[DELTA]["x"].numpy()
            client, stored = _load(context)
            quantized.append(quantize(x, min(stored["weight"], message.content[CONFIG]["weight"]), client.params))
        return reply

    report, grid = run_recorded(secure_config, client_app=recording_client)
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS and len(quantized) == NUM_CLIENTS
    vectors = [np.asarray(r, dtype=np.float64) for r in received if isinstance(r, np.ndarray)]
    assert len(vectors) == NUM_CLIENTS
    chance = 5 / np.sqrt(len(vectors[0]))  # 5 sigma of the correlation of unrelated vectors
    for y in vectors:
        for q in quantized:
            assert not np.array_equal(y, q.astype(np.float64))
            assert abs(np.corrcoef(y, q.astype(np.float64))[0, 1]) < chance
    # and nothing the driver got back holds plain adapter arrays
    for _, reply in grid.log:
        assert ARRAYS not in reply.content


def test_secure_aggregation_config_is_checked():
    with pytest.raises(LoraXSError, match="at least 3 clients"):
        FederationConfig(num_clients=10, fraction_train=0.2, secure_aggregation=True)  # 2 per round
    with pytest.raises(LoraXSError, match="secagg-timeout"):
        FederationConfig(num_clients=10, fraction_train=0.5, secure_aggregation=True, secagg_timeout=0.0)
    assert FederationConfig(num_clients=10, fraction_train=0.3, secure_aggregation=True).secure_aggregation


@pytest.mark.slow
def test_flower_simulation_with_secure_aggregation(tiny_bert_dir, reviews_dir, tmp_path):
    """The real command (Ray, a process per ClientApp call) with --secure-aggregation."""
    import json
    import sys

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "simulations.cli",
        "--num-clients",
        "4",
        "--rounds",
        "2",
        "--fraction",
        "1.0",
        "--partition",
        "iid",
        "--dataset",
        reviews_dir,
        "--model",
        tiny_bert_dir,
        "--rank",
        "4",
        "--secure-aggregation",
        "--secagg-timeout",
        "120",
        "--out",
        str(out),
        "--no-progress",
        "--run-config",
        "final-eval-fraction=0.0 lr=0.01 head-lr=0.01 batch-size=8",
    ]
    done = tagged_run(command, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for entry in report["rounds"]:
        assert entry["clients_trained"] == 4 and entry["skipped"] == ""
        assert entry["secure_aggregation"]["summed"] == 4 and entry["secure_aggregation"]["dropped"] == {}


def test_failing_clients_in_a_secure_round_drop_out_and_the_rest_aggregate(config):
    """--fail-rate with --secure-aggregation: crashed and silent clients leave at stage 1;
    the stage 2-4 messages reach the survivors (the failing wrapper routes them) and rounds complete."""
    from simulations import failing_clients

    shaky = replace(
        config,
        secure_aggregation=True,
        fail_rate=0.3,
        seed=8,
        num_server_rounds=2,
        round_timeout=5.0,
        secagg_timeout=5.0,
    )
    drawn = {r: [failing_clients.failure_kind(shaky, r, p, "train") for p in range(NUM_CLIENTS)] for r in (1, 2)}
    assert {"crash", "timeout", "garbage"} <= {k for kinds in drawn.values() for k in kinds}  # every kind
    app = failing_clients.failing_client_app(make_client_app(shaky), shaky)
    grid = failing_clients.SilencedGrid(RecordingGrid(shaky, client_app=app), shaky)
    report = run_federation(grid, shaky)
    for r, entry in enumerate(report["rounds"], start=1):
        # a garbage reply at stage 1 carries no update to spoil (the masked input comes later, and
        # is bounded by the clipping range): that client stays in; crashed and silent ones leave
        assert entry["skipped"] == "" and entry["clients_trained"] == sum(k in (None, "garbage") for k in drawn[r])
        assert not any("no" in key and "registered" in key for key in entry["failures"])
