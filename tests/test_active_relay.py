"""An active relay (the SuperLink's place) against pinned nodes, at the message level, through the
real ClientApp and ServerApp code (in-process, tiny BERT, 5 clients): it injects a setup, swaps a
key in the directory, replays stages, forges the survivor lists, asks for two-node groups. Each is
refused by the node it targets, and what the relay holds of that node stays sealed or masked."""

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from client.app import make_client_app
from client.secure_stages import DELTA
from server.federation import run_federation
from server.sealed_updates import UpdateSealing
from server.secure_rounds import SecureRounds
from shared.crypto.sealing import (
    SealContext,
    SealError,
    ServerPrivateKey,
    open_update,
    save_private_key,
    save_public_key,
)
from shared.crypto.secagg.params import SecAggError, SecAggParams
from shared.federation.protocol import ARRAYS, CONFIG, METRICS, STATUS
from shared.federation.sealed_update import SEALED, SEALED_UPDATE
from shared.federation.secure_auth import SETUP_SIGNATURE, SIGNATURE
from shared.federation.secure_messages import MASKED_INPUT, SECAGG, SHARE_KEYS, UNMASK, flat
from simulations.in_process import FIRST_NODE_ID, RUN_ID, _copy
from tests.helpers import NUM_CLIENTS, RecordingGrid, make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VICTIM = FIRST_NODE_ID  # partition 0


class Relay(RecordingGrid):
    """Delivers every message as the SuperLink would, after `attack(relay, message)` had its way
    with it (it returns the message to deliver, or None to deliver it as it is)."""

    def __init__(self, config, node_config: dict, attack=None):
        super().__init__(config, client_app=make_client_app(config))
        self.attack = attack
        self.seen: list[Message] = []  # every server message, as sent
        self.extra: list[tuple[Message, Message]] = []  # messages the relay made up, and their replies
        for context in self.contexts.values():
            context.node_config = {**context.node_config, **node_config}

    def deliver(self, message):
        self.seen.append(_copy(message))
        if self.attack is not None:
            message = self.attack(self, _copy(message)) or message
        return super().deliver(message)

    def inject(self, message: Message) -> Message:
        """An extra message of the relay's own to a node; the node's reply (also logged)."""
        message = _copy(message)
        message.metadata.__dict__["_message_id"] = ""
        reply = RecordingGrid.deliver(self, message)
        self.extra.append((message, reply))
        return reply

    def victim_replies(self):
        return [r for m, r in self.log + self.extra if m.metadata.dst_node_id == VICTIM]


@pytest.fixture
def keys(tmp_path):
    """The ServerApp's key file and the public file every node pins (with its signing key)."""
    key = ServerPrivateKey.generate()
    save_private_key(key, tmp_path / "server.key")
    save_public_key(key.public_key, tmp_path / "server_key.pub")
    return key, str(tmp_path / "server.key"), str(tmp_path / "server_key.pub")


@pytest.fixture
def config(tiny_bert_dir, reviews_dir, tmp_path, keys):
    return make_config(
        tiny_bert_dir,
        reviews_dir,
        tmp_path / "run",
        num_server_rounds=1,
        final_eval_fraction=0.0,
        secure_aggregation=True,
        server_key_file=keys[1],
    )


def pinned(keys, allow=True, **more) -> dict:
    return {"server-key": keys[2], **({"secure-aggregation": True} if allow else {}), **more}


def run(config, node_config, attack=None):
    grid = Relay(config, node_config, attack)
    return run_federation(grid, config), grid


def assert_only_sealed_or_refused(grid):
    """What the relay holds of the victim: error replies, or sealed records and clear metrics."""
    replies = grid.victim_replies()
    assert replies
    for reply in replies:
        if not reply.has_error():
            assert set(reply.content.keys()) <= {SEALED, METRICS, STATUS}, reply.content.keys()


def refusals(grid) -> list[str]:
    return [r.error.reason for r in grid.victim_replies() if r.has_error()]


def test_pinned_nodes_sum_securely_with_signed_messages_and_sealed_stage_replies(config, keys):
    report, grid = run(config, pinned(keys))
    entry = report["rounds"][0]
    assert entry["clients_trained"] == entry["secure_aggregation"]["summed"] == NUM_CLIENTS
    assert entry["secure_aggregation"]["dropped"] == {} and entry["secure_aggregation"]["blamed"] == {}
    for message, reply in grid.log:
        kind = message.metadata.message_type
        if kind == "train":
            assert SETUP_SIGNATURE in message.content[CONFIG] and set(reply.content.keys()) == {SEALED, METRICS, STATUS}
        elif kind.startswith("train."):
            assert SIGNATURE in message.content[CONFIG] and set(reply.content.keys()) == {SEALED}
    # a stage reply opens only under its own stage (and only with the server's private key)
    key = keys[0]
    message, reply = next((m, r) for m, r in grid.log if m.metadata.message_type == UNMASK)
    fingerprint = next(m for m, _ in grid.log if m.metadata.message_type == "train").content[CONFIG]["fingerprint"]
    sealed, node = reply.content[SEALED][SEALED_UPDATE], message.metadata.dst_node_id
    open_update(sealed, key, SealContext(RUN_ID, 1, node, fingerprint, "unmask"))
    for other in ("masked", "share-keys", ""):
        with pytest.raises(SealError):
            open_update(sealed, key, SealContext(RUN_ID, 1, node, fingerprint, other))
    with pytest.raises(SealError):
        open_update(sealed, ServerPrivateKey.generate(), SealContext(RUN_ID, 1, node, fingerprint, "unmask"))


def _injected_setup(message: Message, participants: list[int], threshold: int, signature: bytes | None = None):
    """The issue's proof of concept: a setup added to a plain train message."""
    arrays = message.content[ARRAYS]
    entries = {
        "secagg-participants": [str(n) for n in participants],
        "secagg-threshold": threshold,
        "secagg-vector_length": len(flat(arrays)),
        "secagg-clipping_range": 8.0,
        "secagg-max_weight": 10_000,
        "secagg-modulus_bits": 32,
        "secagg-run_id": str(RUN_ID),
        "secagg-server_round": message.content[CONFIG]["server-round"],
    }
    extra = {SETUP_SIGNATURE: signature} if signature is not None else {}
    message.content[CONFIG] = ConfigRecord({**message.content[CONFIG], **entries, **extra})
    return message


@pytest.mark.parametrize("victim_config", ["not allowed", "allowed, unsigned", "allowed, badly signed"])
def test_a_setup_injected_into_a_plain_round_is_refused(config, keys, victim_config):
    plain = replace(config, secure_aggregation=False, encrypt_updates=True)  # pinned nodes seal anyway
    relay_nodes = [FIRST_NODE_ID + 1, FIRST_NODE_ID + 2]
    signature = b"\x01" * 64 if victim_config == "allowed, badly signed" else None

    def inject(relay, message):
        if message.metadata.message_type == "train" and message.metadata.dst_node_id == VICTIM:
            return _injected_setup(message, [VICTIM] + relay_nodes, 2, signature)

    grid = Relay(plain, pinned(keys, allow=False), inject)  # the others: pinned, plain rounds
    if victim_config != "not allowed":  # the victim allows (so requires) secure aggregation
        grid.contexts[VICTIM].node_config["secure-aggregation"] = True
    report = run_federation(grid, plain)
    reasons = refusals(grid)
    expected = {
        "not allowed": "does not allow secure aggregation",
        "allowed, unsigned": "not signed by the server",
        "allowed, badly signed": "bad server signature",
    }[victim_config]
    assert len(reasons) == 1 and expected in reasons[0], reasons
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS - 1
    assert_only_sealed_or_refused(grid)
    assert not any(DELTA in c.state for c in grid.contexts.values())  # no delta kept for a later stage


def test_a_two_node_group_is_refused_by_the_node_and_never_started_by_the_server(config, keys):
    key = keys[0]

    def two_nodes(relay, message):
        if message.metadata.message_type == "train" and message.metadata.dst_node_id == VICTIM:
            return _injected_setup(message, [VICTIM, FIRST_NODE_ID + 1], 2, b"\x00" * 64)

    report, grid = run(config, pinned(keys), two_nodes)
    assert any("at least 3" in reason for reason in refusals(grid))
    assert_only_sealed_or_refused(grid)
    # the server refuses to set up such a round, and a node refuses a group below its own minimum
    rounds = SecureRounds(60.0, 8.0, 1000, UpdateSealing(key))
    with pytest.raises(SecAggError, match="needs at least 3"):
        rounds.setup([1, 2], 1, ArrayRecord(), RUN_ID, "f")
    with pytest.raises(SecAggError, match="at least 3"):
        SecAggParams(participants=(1, 2), threshold=2, vector_length=4)


def test_a_node_refuses_a_group_below_its_own_minimum(config, keys):
    grid = Relay(config, pinned(keys))
    grid.contexts[VICTIM].node_config["secagg-min-clients"] = NUM_CLIENTS + 1
    report = run_federation(grid, config)
    assert any("below this node's minimum of 6" in reason for reason in refusals(grid))
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS - 1


def test_a_key_swapped_in_the_directory_is_refused_and_no_share_reaches_the_relay(config, keys):
    from cryptography.hazmat.primitives.asymmetric import x25519

    relay_key = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    swapped = []

    def swap(relay, message):
        if message.metadata.message_type == SHARE_KEYS and message.metadata.dst_node_id == VICTIM:
            directory = dict(message.content[SECAGG])
            peer = next(k for k in directory if k != str(VICTIM))
            directory[peer] = relay_key + relay_key  # the relay's keys in a peer's place
            swapped.append(peer)
            message.content[SECAGG] = ConfigRecord(directory)
            return message

    report, grid = run(config, pinned(keys), swap)
    assert swapped and refusals(grid) == [next(r.error.reason for r in grid.victim_replies() if r.has_error())]
    assert "bad server signature" in refusals(grid)[0]
    entry = report["rounds"][0]
    assert entry["skipped"] == "" and entry["clients_trained"] == NUM_CLIENTS - 1  # the others go on
    assert str(VICTIM) in entry["secure_aggregation"]["dropped"]
    assert_only_sealed_or_refused(grid)
    kinds = [m.metadata.message_type for m, r in grid.log if m.metadata.dst_node_id == VICTIM and not r.has_error()]
    assert kinds == ["query", "train"]  # the victim boxed no share and sent no masked vector


def test_replayed_stages_are_refused(config, keys):
    """Within a round: a stage message delivered again; across rounds: round 1's train message
    (signed setup) in round 2, and round 1's signed survivor list in round 2's unmask message."""
    two_rounds = replace(config, num_server_rounds=2)
    recorded = {}

    def replay(relay, message):
        kind, node = message.metadata.message_type, message.metadata.dst_node_id
        server_round = message.content[CONFIG]["server-round"]
        if node != VICTIM:
            return None
        recorded.setdefault((kind, server_round), _copy(message))
        if kind == MASKED_INPUT and server_round == 1:
            relay.inject(recorded[(SHARE_KEYS, 1)])  # stage 2 again, after the victim moved on
        if kind == UNMASK and server_round == 2:  # round 1's signed survivor lists, relabelled
            message.content[SECAGG] = recorded[(UNMASK, 1)].content[SECAGG]
            message.content[CONFIG] = ConfigRecord(
                {**message.content[CONFIG], SIGNATURE: recorded[(UNMASK, 1)].content[CONFIG][SIGNATURE]}
            )
            return message
        return None

    report, grid = run(two_rounds, pinned(keys), replay)
    reasons = refusals(grid)
    assert any("stage 2 requested, but this client is at stage 3" in r for r in reasons), reasons
    assert any("bad server signature" in r for r in reasons), reasons
    assert [r["skipped"] for r in report["rounds"]] == ["", ""]
    # round 1's whole train message (signed setup, round 1) delivered again: a replay, refused before training
    reply = grid.inject(recorded[("train", 1)])
    assert reply.has_error() and "already started: a replay" in reply.error.reason
    reply = grid.inject(recorded[("train", 2)])
    assert reply.has_error() and "already started: a replay" in reply.error.reason
    assert_only_sealed_or_refused(grid)


@pytest.mark.parametrize("forgery", ["a survivor listed as dropped", "survivors left out", "unsigned"])
def test_forged_survivor_lists_are_refused_and_nothing_is_revealed(config, keys, forgery, caplog):
    def forge(relay, message):
        if message.metadata.message_type == UNMASK and message.metadata.dst_node_id == VICTIM:
            request = {k: list(v) for k, v in message.content[SECAGG].items()}
            if forgery == "unsigned":
                message.content[CONFIG] = ConfigRecord(
                    {k: v for k, v in message.content[CONFIG].items() if k != SIGNATURE}
                )
                return message
            peer = next(n for n in request["survivors"] if n != str(VICTIM))
            request["survivors"].remove(peer)
            if forgery == "a survivor listed as dropped":  # the double unmask: seed and mask key of `peer`
                request["dropped"].append(peer)
            message.content[SECAGG] = ConfigRecord(request)
            return message

    with caplog.at_level(logging.WARNING):
        report, grid = run(config, pinned(keys), forge)
    reasons = refusals(grid)
    assert len(reasons) == 1 and ("bad server signature" in reasons[0] or "not signed by the server" in reasons[0])
    unmask_replies = [r for m, r in grid.log if m.metadata.message_type == UNMASK and m.metadata.dst_node_id == VICTIM]
    assert len(unmask_replies) == 1 and unmask_replies[0].has_error()  # the victim revealed no share
    entry = report["rounds"][0]
    assert entry["skipped"] == "" and entry["clients_trained"] == NUM_CLIENTS  # the others' shares suffice
    assert_only_sealed_or_refused(grid)


def test_without_a_pin_a_later_server_key_never_replaces_the_first(config, keys):
    """Trust on first use: the key that came first stays; another one is refused, in any round."""
    other = ServerPrivateKey.generate()
    sealed = replace(config, secure_aggregation=False, encrypt_updates=True)
    grid = Relay(sealed, {})
    run_federation(grid, sealed)
    first = grid.contexts[VICTIM].state["loraxs.server-key"]
    assert first["key"] == keys[0].public_key.raw and first["signing"] == keys[0].public_key.signing
    # the factors sent again (as to a node that lost them) with the relay's keys: refused, the first stay
    message = next(m for m in grid.seen if m.metadata.dst_node_id == VICTIM and "server-key" in m.content[CONFIG])
    for changed in (
        {"server-key": other.public_key.raw, "server-signing-key": other.public_key.signing},
        {"server-signing-key": other.public_key.signing},
    ):
        again = _copy(message)
        again.content[CONFIG] = ConfigRecord({**again.content[CONFIG], **changed})
        reply = grid.inject(again)
        assert reply.has_error() and "trusted first" in reply.error.reason
    assert grid.contexts[VICTIM].state["loraxs.server-key"]["key"] == first["key"]


def test_the_server_blames_a_node_that_reveals_a_bad_share_and_still_sums(config, keys):
    """One survivor reveals garbage shares (a malicious node, or anyone sealing a reply in its
    name): they do not match their owners' commitments, so they are set aside, that node is
    blamed, and the round sums from the good shares: the plain weighted mean of all five deltas."""
    from shared.federation import secure_auth

    two_rounds = replace(config, num_server_rounds=2)
    bad_node = FIRST_NODE_ID + 1
    honest = make_client_app(two_rounds)
    deltas = {}

    def lying_client(message, context):
        if message.metadata.message_type == MASKED_INPUT and message.content[CONFIG]["server-round"] == 1:
            deltas[context.node_id] = context.state[DELTA]["x"].numpy().copy()
        reply = honest(message, context)
        if message.metadata.message_type == UNMASK and context.node_id == bad_node and not reply.has_error():
            train = next(m for m in grid.seen if m.metadata.message_type == "train").content[CONFIG]
            seal_context = SealContext(
                RUN_ID, message.content[CONFIG]["server-round"], bad_node, train["fingerprint"], "unmask"
            )
            opened = secure_auth.open_stage(reply.content, keys[0], seal_context)
            shares = {k: v[:4] + bytes(len(v) - 4) for k, v in opened[SECAGG].items()}  # right index, wrong value
            sealed = secure_auth.seal_stage({SECAGG: ConfigRecord(shares)}, keys[0].public_key, seal_context)
            reply.content = RecordDict({SEALED: sealed})
        return reply

    grid = Relay(two_rounds, pinned(keys))
    grid.client_app = lying_client
    report = run_federation(grid, two_rounds)
    entry = report["rounds"][0]
    assert entry["skipped"] == "" and entry["clients_trained"] == NUM_CLIENTS
    assert list(entry["secure_aggregation"]["blamed"]) == [str(bad_node)]
    assert "never committed to" in entry["secure_aggregation"]["blamed"][str(bad_node)]
    weights = {
        m.metadata.dst_node_id: r.content[METRICS]["num-examples"]
        for m, r in grid.log
        if m.metadata.message_type == "train" and m.content[CONFIG]["server-round"] == 1
    }
    start = flat(next(m for m in grid.seen if m.metadata.message_type == "train").content[ARRAYS])
    total = sum(weights[n] for n in deltas)
    expected = start + sum(weights[n] * deltas[n] for n in deltas) / total
    sent_next = next(
        m for m in grid.seen if m.metadata.message_type == "train" and m.content[CONFIG]["server-round"] == 2
    )
    assert len(deltas) == NUM_CLIENTS
    assert (
        np.abs(flat(sent_next.content[ARRAYS]) - expected).max()
        <= entry["secure_aggregation"]["max_quantization_error"] + 1e-6
    )


def test_a_pin_without_a_signing_key_still_seals_but_refuses_secure_aggregation(config, keys, tmp_path):
    """A server_key.pub written before the signing key existed (one line): sealing works as
    before; secure aggregation is refused, since no signature can be checked."""
    old_pin = tmp_path / "old_server_key.pub"
    old_pin.write_text(Path(keys[2]).read_text().splitlines()[0] + "\n")
    sealed = replace(config, secure_aggregation=False, encrypt_updates=True)
    report, _ = run(sealed, {"server-key": str(old_pin)})
    assert report["rounds"][0]["clients_trained"] == NUM_CLIENTS
    report, grid = run(
        replace(config, out_dir=config.out_dir + "-secure"), {"server-key": str(old_pin), "secure-aggregation": True}
    )
    assert all("knows no server signing key" in reason for reason in refusals(grid)) and refusals(grid)
    assert report["rounds"][0]["skipped"]


def test_a_deployed_node_opts_in_to_secure_aggregation_in_its_own_node_config(tmp_path, capsys):
    """`client.run --superlink ... --secure-aggregation` -> node config secure-aggregation=true;
    without it a deployed node (data-dir) refuses, whatever the run config says."""
    from flwr.app import Context
    from flwr.common.config import parse_config_args

    from client.run import main as client_main
    from client.secure_policy import allowed, required
    from deployment.supernode import SuperNodeConfig, supernode_command
    from tests.helpers import write_reviews

    data = write_reviews(tmp_path / "data")
    for opted_in in (False, True):
        command = supernode_command(
            SuperNodeConfig("127.0.0.1:9092", data, insecure=True, secure_aggregation=opted_in), 40001
        )
        node_config = parse_config_args([command[command.index("--node-config") + 1]])
        context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
        assert allowed(context, run_secure=True) is opted_in and required(context) is opted_in
    simulated = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    assert allowed(simulated, run_secure=True) and not allowed(simulated, run_secure=False)
    assert client_main(["--data", str(data), "--secure-aggregation"]) == 1
    assert "--secure-aggregation: only for joining a federation" in capsys.readouterr().err


def test_a_replayed_reply_counts_once(caplog):
    """A relay that hands the server a node's reply twice (or a second, different one): the
    strategy keeps the first reply per node and round."""
    from flwr.app import MetricRecord
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from server.strategy import LoraXSStrategy
    from shared.federation.protocol import STACKED_R
    from tests.helpers import FINGERPRINT, full_arrays, reply_from

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = RUN_ID, 1, SUPERLINK_NODE_ID
    strategy = LoraXSStrategy(
        ArrayRecord(), FINGERPRINT, "fp32", evaluate_metrics=(), fraction_train=1.0, min_available_nodes=1
    )
    strategy._sent["train"] = (full_arrays(0.0), ConfigRecord())

    def plain(value, examples):
        return RecordDict(
            {
                ARRAYS: full_arrays(value),
                METRICS: MetricRecord({"num-examples": examples, "train-loss": 0.5}),
                STATUS: ConfigRecord({"fingerprint": FINGERPRINT}),
            }
        )

    replies = [
        reply_from(1, plain(1.0, 10)),
        reply_from(2, plain(4.0, 30)),
        reply_from(2, plain(4.0, 30)),
        reply_from(2, plain(100.0, 30)),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(3, replies)
    assert sum("repeated reply from node 2" in r.getMessage() for r in caplog.records) == 2
    assert strategy.stats[3].clients_trained == 2
    np.testing.assert_array_equal(arrays[STACKED_R].numpy(), np.full((2, 3, 3), 3.25, np.float32))  # (10*1 + 30*4)/40
