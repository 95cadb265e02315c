"""encrypt-updates: train updates sealed to the ServerApp's HPKE key, end to end in-process (tiny
BERT), and every rejection case through the strategy's aggregation path."""

import logging
import os
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import make_client_app
from server.sealed_updates import PUBLIC_KEY_FILE, UpdateSealing
from server.strategy import LoraXSStrategy
from shared.artifacts.adapter_file import load_adapter
from shared.crypto.sealing import SealContext, ServerPrivateKey, load_public_key
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, STACKED_R, STATUS
from shared.federation.sealed_update import SEALED, SEALED_UPDATE, SERVER_KEY, seal_arrays
from simulations.in_process import RUN_ID
from tests.helpers import FINGERPRINT, NUM_CLIENTS, full_arrays, make_config, reply_from, run_recorded

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config(tiny_bert_dir, reviews_dir, tmp_path):
    return make_config(tiny_bert_dir, reviews_dir, tmp_path / "run", num_server_rounds=2, final_eval_fraction=0.0)


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_sealed_round_gives_exactly_the_plain_aggregate_and_relays_see_only_ciphertext(config, tmp_path, suite):
    plain_report, _ = run_recorded(config)
    sealed_config = replace(config, out_dir=str(tmp_path / "sealed"), encrypt_updates=True, hpke_suite=suite)
    sealed_report, grid = run_recorded(sealed_config)

    plain, _ = load_adapter(f"{config.out_dir}/global_adapter.safetensors")
    sealed, _ = load_adapter(f"{sealed_config.out_dir}/global_adapter.safetensors")
    for name in plain:
        assert np.array_equal(plain[name].numpy(), sealed[name].numpy()), name  # lossless: exact
    assert [r["clients_trained"] for r in sealed_report["rounds"]] == [NUM_CLIENTS, NUM_CLIENTS]
    assert [r["rejected_updates"] for r in sealed_report["rounds"]] == [0, 0]

    public = load_public_key(f"{sealed_config.out_dir}/{PUBLIC_KEY_FILE}")
    train = grid.exchanges(kind="train")
    with_key = [m for m, _ in train if SERVER_KEY in m.content[CONFIG]]
    assert len(with_key) == NUM_CLIENTS and all(
        "basis-model" in m.content[CONFIG] for m in with_key
    )  # first message only
    assert all(m.content[CONFIG][SERVER_KEY] == public.raw for m in with_key)
    for message, reply in train:
        assert set(reply.content.keys()) == {SEALED, METRICS, STATUS}
        r_bytes = message.content[ARRAYS][STACKED_R].numpy().tobytes()
        assert r_bytes[:32] not in reply.content[SEALED][SEALED_UPDATE]
    # size: the sealed update is the plain arrays' protobuf + 48 bytes of HPKE (1,136 post-quantum)
    extra = (
        sealed_report["final"]["bytes_up_per_client_per_round"] - plain_report["final"]["bytes_up_per_client_per_round"]
    )
    assert extra <= (48 if suite == "x25519" else 1136) + 64


def test_a_replayed_update_from_the_last_round_is_rejected_and_the_round_completes(config, caplog):
    honest = make_client_app(replace(config, encrypt_updates=True))
    first_round = {}

    def replaying_client(message, context):
        reply = honest(message, context)
        if message.metadata.message_type == "train" and context.node_config["partition-id"] == 0:
            server_round = message.content[CONFIG]["server-round"]
            first_round.setdefault(server_round, reply.content[SEALED])
            if server_round == 2:
                reply.content[SEALED] = first_round[1]
        return reply

    sealed_config = replace(config, encrypt_updates=True)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        report, _ = run_recorded(sealed_config, client_app=replaying_client)
    reasons = [r.getMessage() for r in caplog.records if "rejected the update" in r.getMessage()]
    assert len(reasons) == 1 and "does not open" in reasons[0]
    assert [r["clients_trained"] for r in report["rounds"]] == [NUM_CLIENTS, NUM_CLIENTS - 1]
    assert [r["rejected_updates"] for r in report["rounds"]] == [0, 1]


def test_a_pinned_client_refuses_another_server_key(config, tmp_path, caplog):
    other = ServerPrivateKey.generate()
    from shared.crypto.sealing import save_public_key

    save_public_key(other.public_key, tmp_path / "pinned.pub")
    sealed_config = replace(config, encrypt_updates=True, num_server_rounds=1)
    client_app = make_client_app(sealed_config)

    def pinned_node_zero(message, context):
        if context.node_config["partition-id"] == 0:
            context.node_config = {**context.node_config, "server-key": str(tmp_path / "pinned.pub")}
        return client_app(message, context)

    with caplog.at_level(logging.WARNING, logger="flwr"):
        report, _ = run_recorded(sealed_config, client_app=pinned_node_zero)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert any("differs from the pinned key" in f for f in failures)
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS - 1


# --- every rejection case, straight through LoraXSStrategy.aggregate_train ---------------------


def _sealed(arrays, key, node, server_round=3, run_id=None, fingerprint=FINGERPRINT) -> ConfigRecord:
    context = SealContext(RUN_ID if run_id is None else run_id, server_round, node, fingerprint)
    return seal_arrays(arrays, key, context)


def _content(sealed: ConfigRecord, examples: int = 10) -> RecordDict:
    return RecordDict(
        {
            SEALED: sealed,
            METRICS: MetricRecord({"num-examples": examples, "train-loss": 0.5}),
            STATUS: ConfigRecord({"fingerprint": FINGERPRINT}),
        }
    )


def _flip(sealed: ConfigRecord, at: int) -> ConfigRecord:
    data = bytearray(sealed[SEALED_UPDATE])
    data[at] ^= 1
    return ConfigRecord({SEALED_UPDATE: bytes(data)})


BAD = {
    "tampered ciphertext": lambda k, n: _content(_flip(_sealed(full_arrays(9.0), k, n), 60)),
    "tampered KEM output": lambda k, n: _content(_flip(_sealed(full_arrays(9.0), k, n), 3)),
    "replayed from round 2": lambda k, n: _content(_sealed(full_arrays(9.0), k, n, server_round=2)),
    "another node's update": lambda k, n: _content(_sealed(full_arrays(9.0), k, n + 1)),
    "another run": lambda k, n: _content(_sealed(full_arrays(9.0), k, n, run_id=RUN_ID + 1)),
    "another basis": lambda k, n: _content(_sealed(full_arrays(9.0), k, n, fingerprint="cd" * 32)),
    "sealed to another key": lambda k, n: _content(
        _sealed(full_arrays(9.0), ServerPrivateKey.generate().public_key, n)
    ),
    "truncated": lambda k, n: _content(
        ConfigRecord({SEALED_UPDATE: _sealed(full_arrays(9.0), k, n)[SEALED_UPDATE][:40]})
    ),
    "cut short by one byte": lambda k, n: _content(
        ConfigRecord({SEALED_UPDATE: _sealed(full_arrays(9.0), k, n)[SEALED_UPDATE][:-1]})
    ),
    "random bytes": lambda k, n: _content(ConfigRecord({SEALED_UPDATE: os.urandom(400)})),
    "not bytes": lambda k, n: _content(ConfigRecord({SEALED_UPDATE: "text"})),
    "extra keys": lambda k, n: _content(ConfigRecord({SEALED_UPDATE: b"x" * 100, "more": 1})),
    "plain update": lambda k, n: RecordDict(
        {ARRAYS: full_arrays(9.0), **{key: v for key, v in _content(ConfigRecord()).items() if key != SEALED}}
    ),
    "sealed garbage": lambda k, n: _content(
        ConfigRecord(
            {
                SEALED_UPDATE: __import__("shared.crypto.sealing", fromlist=["x"]).seal_update(
                    b"\x0a\xff\xff", k, SealContext(RUN_ID, 3, n, FINGERPRINT)
                )
            }
        )
    ),
    "sealed wrong shapes": lambda k, n: _content(
        _sealed(
            ArrayRecord(
                {STACKED_R: Array(np.zeros((1, 3, 3), np.float32)), "classifier.bias": Array(np.zeros(2, np.float32))}
            ),
            k,
            n,
        )
    ),
    "sealed NaN": lambda k, n: _content(_sealed(full_arrays(float("nan")), k, n)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_bad_sealed_update_is_rejected_with_a_reason_and_the_rest_averaged(case, caplog):
    TaskIdentity.run_id = RUN_ID
    sealing = UpdateSealing(ServerPrivateKey.generate())
    strategy = LoraXSStrategy(
        ArrayRecord(),
        FINGERPRINT,
        "fp32",
        evaluate_metrics=(),
        sealing=sealing,
        fraction_train=1.0,
        min_available_nodes=1,
    )
    strategy._sent["train"] = (full_arrays(0.0), ConfigRecord())
    key = sealing.private_key.public_key
    replies = [
        reply_from(1, _content(_sealed(full_arrays(1.0), key, 1), 10)),
        reply_from(2, _content(_sealed(full_arrays(4.0), key, 2), 30)),
        reply_from(3, BAD[case](key, 3)),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(3, replies)
    reasons = [r.getMessage() for r in caplog.records if "rejected the update of node 3" in r.getMessage()]
    assert len(reasons) == 1, case
    assert strategy.stats[3].rejected_updates == 1 and strategy.stats[3].clients_trained == 2
    np.testing.assert_array_equal(arrays[STACKED_R].numpy(), np.full((2, 3, 3), 3.25, np.float32))  # (10*1 + 30*4)/40


def test_server_key_file_is_created_once_then_reused(tmp_path):
    first = UpdateSealing.for_run(str(tmp_path / "server.key"), tmp_path / "run1")
    again = UpdateSealing.for_run(str(tmp_path / "server.key"), tmp_path / "run2")
    assert first.public_key == again.public_key
    assert load_public_key(tmp_path / "server.key.pub").raw == first.public_key
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0
    (tmp_path / "server.key").chmod(0o644)
    with pytest.raises(LoraXSError, match="readable by others"):
        UpdateSealing.for_run(str(tmp_path / "server.key"), tmp_path / "run3")


def test_encrypt_updates_is_a_strict_boolean_in_the_run_config_and_a_flag():
    from shared.federation.run_config import FederationConfig
    from simulations.cli import build_config, parse_args

    assert FederationConfig.from_run_config({"encrypt-updates": "true"}).encrypt_updates is True
    assert FederationConfig.from_run_config({"encrypt-updates": False}).encrypt_updates is False
    with pytest.raises(LoraXSError, match="encrypt-updates must be a bool"):
        FederationConfig.from_run_config({"encrypt-updates": "yes"})
    assert build_config(parse_args(["--encrypt", "--out", "x"])).encrypt_updates is True
    assert build_config(parse_args(["--out", "x", "--run-config", "encrypt-updates=true"])).encrypt_updates is True
    assert build_config(parse_args(["--out", "x"])).encrypt_updates is False


def test_a_server_key_file_of_another_suite_is_refused(tmp_path):
    UpdateSealing.for_run(str(tmp_path / "server.key"), tmp_path / "run1", "mlkem768-x25519")
    with pytest.raises(LoraXSError, match="holds a mlkem768-x25519 key, but hpke-suite is x25519"):
        UpdateSealing.for_run(str(tmp_path / "server.key"), tmp_path / "run2", "x25519")
