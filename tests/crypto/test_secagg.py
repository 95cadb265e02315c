"""Secure aggregation: the sum equals the plain weighted mean within the reported bound, dropouts,
garbage replies, and what the server receives never reveals one client's vector."""

import numpy as np
import pytest

from shared.crypto.secagg import masks
from shared.crypto.secagg.client import SecAggClient
from shared.crypto.secagg.params import SecAggError, SecAggParams, max_mean_error, quantize
from shared.crypto.secagg.server import SecAggServer

IDS = (11, 2**40 + 3, 77, 5, 2**63 + 9)
D = 2 * 16 * 16 + 2 * 16  # two r x r matrices and a small head, flattened


def _setup(ids=IDS, threshold=3, seed=0, **kw):
    params = SecAggParams(
        participants=tuple(sorted(ids)), threshold=threshold, vector_length=D, run_id=4, server_round=9, **kw
    )
    rng = np.random.default_rng(seed)
    xs = {i: rng.normal(0, 0.3, D).astype(np.float32) for i in params.participants}  # (D,) each
    ws = {i: int(rng.integers(10, 400)) for i in params.participants}
    return params, xs, ws


class Recorder(SecAggServer):
    """The server, plus a copy of every reply it is handed (what a relay or the server sees)."""

    def __init__(self, params):
        super().__init__(params)
        self.seen = []

    def receive_keys(self, node, reply):
        self.seen.append(reply)
        return super().receive_keys(node, reply)

    def receive_shares(self, node, reply):
        self.seen.append(reply)
        return super().receive_shares(node, reply)

    def receive_masked(self, node, reply):
        self.seen.append(reply)
        return super().receive_masked(node, reply)

    def receive_reveal(self, node, reply):
        self.seen.append(reply)
        return super().receive_reveal(node, reply)


def _round(params, xs, ws, stop_after_shares=(), stop_after_masked=(), garbage=None, state_hops=True):
    """Drives stages 0-4 like a Flower ServerApp would; returns (server, result or exception)."""
    server = Recorder(params)
    clients = {i: SecAggClient(SecAggParams.from_config(params.to_config()), i) for i in params.participants}
    for i, c in clients.items():
        server.receive_keys(i, c.keys())
    directory = server.directory()
    for i, c in clients.items():
        server.receive_shares(i, c.share_keys(directory))
    inboxes = server.inboxes()
    for i, c in clients.items():
        if state_hops:  # each Flower message runs in a fresh process: state goes through context.state
            c = clients[i] = SecAggClient.from_state(c.to_state())
        if i in stop_after_shares:
            continue
        reply = c.masked_input(inboxes[i], xs[i], ws[i])
        server.receive_masked(i, (garbage or {}).get(i, reply))
    request = server.unmask_request()
    for i in request["survivors"]:
        if i not in stop_after_masked:
            server.receive_reveal(i, clients[i].reveal(request))
    return server, server.result()


def _plain_mean(xs, ws, who, max_weight=1000):
    w = {i: min(ws[i], max_weight) for i in who}
    return sum(w[i] * xs[i].astype(np.float64) for i in who) / sum(w.values()), sum(w.values())


def test_five_clients_equal_plain_weighted_mean_within_bound():
    params, xs, ws = _setup()
    server, (weighted_sum, total_weight, who) = _round(params, xs, ws)
    expected, expected_weight = _plain_mean(xs, ws, params.participants)
    assert who == params.participants and total_weight == expected_weight and not server.dropped
    error = np.abs(weighted_sum / total_weight - expected).max()
    bound = max_mean_error(params, 5, total_weight)
    assert error <= bound and bound < 1e-6  # measured ~1e-7 with 29-bit values, C = 8
    assert params.quantization_bits == 29 and params.wire_dtype == np.uint32


@pytest.mark.parametrize("when", ["stop_after_shares", "stop_after_masked"])
def test_client_dropping_after_key_exchange(when):
    params, xs, ws = _setup(seed=1)
    gone = params.participants[2]
    server, (weighted_sum, total_weight, who) = _round(params, xs, ws, **{when: (gone,)})
    summed = [i for i in params.participants if i != gone or when == "stop_after_masked"]
    expected, expected_weight = _plain_mean(xs, ws, summed)
    assert list(who) == summed and total_weight == expected_weight
    assert np.abs(weighted_sum / total_weight - expected).max() <= max_mean_error(params, len(summed), total_weight)


def test_too_few_survivors_is_a_clear_error():
    params, xs, ws = _setup()
    with pytest.raises(SecAggError, match="only 2 of 5 clients sent a masked vector.*at least 3"):
        _round(params, xs, ws, stop_after_shares=params.participants[:3])
    with pytest.raises(SecAggError, match="only 2 of 5 clients revealed"):
        _round(params, xs, ws, stop_after_masked=params.participants[:3])


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "text",
        np.zeros(D + 1, np.float32),
        np.zeros(D, np.uint32),
        np.zeros((D + 1, 1), np.uint32),
        np.zeros(D + 1, np.int64),
        {"masked": 1},
        [1, 2, 3],
    ],
)
def test_garbage_masked_vector_excludes_that_client(junk):
    params, xs, ws = _setup(seed=2)
    bad = params.participants[1]
    server, (weighted_sum, total_weight, who) = _round(params, xs, ws, garbage={bad: junk})
    assert bad not in who and "malformed stage-3 reply" in server.dropped[bad]
    expected, _ = _plain_mean(xs, ws, who)
    assert np.abs(weighted_sum / total_weight - expected).max() <= max_mean_error(params, 4, total_weight)


def test_checkers_never_raise_on_hostile_replies():
    params, _, _ = _setup()
    junk = [
        None,
        3,
        "x",
        b"\0" * 32,
        [b"a"],
        {"enc-pk": b"short"},
        {"enc-pk": 1, "mask-pk": 2, "seed-hash": 3},
        {str(i): b"\0" * 116 for i in IDS},
        np.zeros(3),
        object(),
    ]
    for reply in junk:
        server = SecAggServer(params)
        node = params.participants[0]
        assert server.receive_keys(node, reply) is False and node in server.dropped
        assert server.receive_keys(12345, reply) is False  # not a participant: ignored
        assert server.receive_shares(params.participants[1], reply) is False  # out of turn
        assert server.receive_masked(params.participants[2], reply) is False
        assert server.receive_reveal(params.participants[3], reply) is False
    clients = {i: SecAggClient(params, i) for i in params.participants}
    server = SecAggServer(params)
    replies = {i: c.keys() for i, c in clients.items()}
    for i, reply in replies.items():
        server.receive_keys(i, reply)
    assert server.receive_keys(params.participants[0], replies[params.participants[0]]) is False  # repeated
    server.directory()  # opens stage 2
    for reply in junk + [{str(i): b"\0" * 115 for i in IDS}]:
        assert server.receive_shares(params.participants[1], reply) is False
    assert set(server.dropped) == {params.participants[0], params.participants[1]}


def test_server_never_holds_a_plain_vector():
    params, xs, ws = _setup(seed=3)
    server, (weighted_sum, total_weight, who) = _round(params, xs, ws, stop_after_shares=(params.participants[4],))
    plain = {i: quantize(xs[i], ws[i], params) for i in params.participants}  # (D + 1,) uint64 each
    arrays = [a for a in server.seen if isinstance(a, np.ndarray)]
    arrays += [a for a in vars(server).values() if isinstance(a, np.ndarray)]
    held = [v.values() for v in vars(server).values() if isinstance(v, dict)]
    arrays += [a for values in held for a in values if isinstance(a, np.ndarray)]
    assert len(arrays) >= 8
    for a in arrays:
        for q in plain.values():
            assert not np.array_equal(a.astype(np.uint64), q)
            assert np.mean(a.astype(np.uint64) == q) < 0.01  # no element leaks in the clear
            assert abs(np.corrcoef(a.astype(np.float64), q.astype(np.float64))[0, 1]) < 0.2
    raw = b"".join(v for r in server.seen if isinstance(r, dict) for v in r.values() if isinstance(v, bytes))
    for i in params.participants:
        assert xs[i].tobytes()[:64] not in raw
    # per node, the server got seed shares (survivors) or mask-key shares (dropped), never both
    for shares in server.revealed.values():
        assert {len(s) for n, s in shares.items() if n in who} == {36}
        assert {len(s) for n, s in shares.items() if n not in who} == {52}


def test_client_refuses_to_reveal_both_secrets_of_a_node():
    params, xs, ws = _setup()
    server = SecAggServer(params)
    clients = {i: SecAggClient(params, i) for i in params.participants}
    for i, c in clients.items():
        server.receive_keys(i, c.keys())
    directory = server.directory()
    for i, c in clients.items():
        server.receive_shares(i, c.share_keys(directory))
    inboxes = server.inboxes()
    a, b = params.participants[:2]
    clients[a].masked_input(inboxes[a], xs[a], ws[a])
    with pytest.raises(SecAggError, match="both secrets"):
        clients[a].reveal({"survivors": list(params.participants), "dropped": [b]})
    with pytest.raises(SecAggError, match="stage"):
        clients[b].reveal({"survivors": list(params.participants), "dropped": []})  # skipped stage 3


def test_weight_is_clipped_and_params_are_checked():
    params, xs, ws = _setup(max_weight=100)
    _, (weighted_sum, total_weight, _) = _round(params, xs, ws, state_hops=False)
    expected, expected_weight = _plain_mean(xs, ws, params.participants, max_weight=100)
    assert total_weight == expected_weight
    assert np.abs(weighted_sum / total_weight - expected).max() <= max_mean_error(params, 5, total_weight)
    for bad in [
        dict(threshold=2),
        dict(threshold=6),
        dict(participants=(1,)),
        dict(participants=(2, 1, 3)),
        dict(vector_length=0),
        dict(clipping_range=-1.0),
        dict(modulus_bits=70),
        dict(max_weight=2**31),
    ]:
        fields = dict(participants=(1, 2, 3, 4, 5), threshold=3, vector_length=4) | bad
        with pytest.raises(SecAggError):
            SecAggParams(**fields)
    for junk in [None, {}, {"participants": 3}, "x"]:
        with pytest.raises(SecAggError):
            SecAggParams.from_config(junk)


def test_mask_generator_is_chacha20_rfc7539():
    """RFC 7539 A.1 test vector 1 (zero key, zero nonce, counter 0): keystream 76 b8 e0 ad a0 f1 3d 90."""
    words = masks.expand_mask(b"\0" * 32, 2, 64)
    assert int(words[0]) == 0x903DF1A0ADE0B876
    assert int(masks.expand_mask(b"\0" * 32, 1, 32)[0]) == 0xADE0B876


def test_one_bad_share_from_an_early_revealer_is_blamed_and_the_round_sums():
    """n = 10, t = 6: the first revealer sends shares with the right index but wrong values. They
    do not match their owners' commitments: set aside, that node blamed, the sum still exact."""
    ids = tuple(100 + i for i in range(10))
    params, xs, ws = _setup(ids=ids, threshold=6, seed=4)
    liar = params.participants[0]
    original = SecAggClient.reveal

    def lying_reveal(self, request):
        out = original(self, request)
        if self.node_id == liar:
            out = {k: v[:4] + bytes(len(v) - 4) for k, v in out.items()}
        return out

    SecAggClient.reveal = lying_reveal
    try:
        server, (weighted_sum, total_weight, who) = _round(params, xs, ws)
    finally:
        SecAggClient.reveal = original
    assert list(server.blamed) == [liar] and "never committed to" in server.blamed[liar]
    assert who == params.participants  # the liar's masked vector still counts; only its reveal is set aside
    expected, _ = _plain_mean(xs, ws, who)
    assert np.abs(weighted_sum / total_weight - expected).max() <= max_mean_error(params, 10, total_weight)


def test_a_share_that_does_not_match_its_commitment_names_its_owner():
    params, xs, ws = _setup(seed=5)
    server = SecAggServer(params)
    clients = {i: SecAggClient(params, i) for i in params.participants}
    for i, c in clients.items():
        server.receive_keys(i, c.keys())
    directory = server.directory()
    cheat = params.participants[1]
    for i, c in clients.items():
        reply = c.share_keys(directory)
        if i == cheat:  # commits to other shares than those it boxed
            reply["commitments"] = [bytes(64)] * len(params.participants)
        server.receive_shares(i, reply)
    inboxes = server.inboxes()
    receiver = params.participants[0]
    with pytest.raises(SecAggError, match=f"share from node {cheat} does not match its commitment"):
        clients[receiver].masked_input(inboxes[receiver], xs[receiver], ws[receiver])


def test_groups_below_three_are_refused():
    with pytest.raises(SecAggError, match="at least 3"):
        SecAggParams(participants=(1, 2), threshold=2, vector_length=4)
    params, xs, ws = _setup(ids=(1, 2, 3, 4), threshold=3)
    client = SecAggClient(params, 1)
    client.stage = 4  # at the unmask stage, holding shares of everyone
    client.received = {n: bytes(88) for n in params.participants}
    with pytest.raises(SecAggError, match="too few survivors"):
        client.reveal({"survivors": [1, 2], "dropped": [3, 4]})
    with pytest.raises(SecAggError, match="only 2 of 3 clients sent a masked vector.*at least 3"):
        _round(*_setup(ids=(5, 6, 7), threshold=2)[:3], stop_after_shares=(7,))
