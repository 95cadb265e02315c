"""Secure aggregation of each round's train step (`secure-aggregation = true`): the stage driver.

The round's train message is the plain one (factors, server key and resends as usual) plus the
setup, asked from `setup` by LoraXSStrategy.configure_train. Each client trains, checks its delta
(finite, inside the clipping range) and keeps it; its reply holds its stage-1 keys and the
plain metrics. `aggregate` (from LoraXSStrategy.aggregate_train) checks those replies as plain
ones are checked (fingerprint, metrics, weight bound), then runs stages 2-4 on the Grid, each
within `timeout` seconds: shared keys (boxes routed through the server), masked deltas, unmask.
SecAggServer checks every stage reply and never raises; it rebuilds masks, never a vector. The
unmasked sum is checked (finite, within what the clipping allows, weights equal to the clear
ones) and the new global adapter is global + sum(w' delta) / sum(w'). Whatever stops the
protocol (fewer than a strict majority, or than MIN_GROUP = 3, left) skips the round, logged:
the global adapter stays; a round that samples fewer than 3 clients is not started.
Everything the server tells the clients is signed with its key, and every stage reply comes
sealed to it (shared/federation/secure_auth.py); a reply that does not open drops its client.
See shared/federation/secure_messages.py for what travels.
"""

from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from shared.crypto.sealing import SealContext, SealError
from shared.crypto.secagg.params import MIN_GROUP, SecAggError, SecAggParams, max_mean_error
from shared.crypto.secagg.server import SecAggServer
from shared.crypto.signing import record_digest
from shared.federation import secure_auth
from shared.federation.protocol import CONFIG, METRICS, TRAIN_METRICS, clean_metrics
from shared.federation.secure_messages import (
    MASKED,
    MASKED_INPUT,
    MASKED_Y,
    SECAGG,
    SHARE_KEYS,
    UNMASK,
    WEIGHT,
    add_delta,
    node_keyed,
    setup_config,
    vector_length,
)

STAGE_NAMES = {SHARE_KEYS: secure_auth.SHARE_KEYS, MASKED_INPUT: secure_auth.MASKED, UNMASK: secure_auth.UNMASK}

MODULUS_BITS = 32  # masked values travel as uint32: 4 B per value, as an fp32 update


@dataclass
class SecureRound:
    """What the report says about one round's secure aggregation."""

    participants: int = 0
    summed: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # node id -> reason
    blamed: dict[str, str] = field(default_factory=dict)  # node id -> the bad shares it handed out or revealed
    max_quantization_error: float | None = None  # bound on any element of the mean delta


class SecureRounds:
    def __init__(self, timeout: float, clipping_range: float, max_weight: int, keys):
        """`keys`: the ServerApp's key pair (server/sealed_updates.UpdateSealing): it signs and opens."""
        self.timeout, self.clipping_range, self.max_weight = timeout, clipping_range, max_weight
        self.private_key = keys.private_key
        self.servers: dict[int, SecAggServer] = {}
        self.rounds: dict[int, SecureRound] = {}
        self.signed: dict[int, tuple[str, bytes]] = {}  # round -> (fingerprint, setup digest)

    def setup(self, nodes: list[int], server_round: int, arrays: ArrayRecord, run_id: int, fingerprint: str) -> dict:
        """Train-config entries of this round's signed setup; `nodes` are the sampled participants.
        SecAggError when fewer than MIN_GROUP were sampled (the round is not started)."""
        self.rounds[server_round] = SecureRound(participants=len(nodes))
        if len(nodes) < MIN_GROUP:
            raise SecAggError(
                f"{len(nodes)} client(s) sampled; secure aggregation needs at least {MIN_GROUP} "
                "(with fewer, each could work out the others' updates from the sum)"
            )
        params = SecAggParams(
            participants=tuple(sorted(nodes)),
            threshold=len(nodes) // 2 + 1,
            vector_length=vector_length(arrays),
            clipping_range=self.clipping_range,
            max_weight=self.max_weight,
            modulus_bits=MODULUS_BITS,
            run_id=run_id,
            server_round=server_round,
        )
        self.servers[server_round] = SecAggServer(params)
        entries = setup_config(params)
        digest = record_digest(entries)
        self.signed[server_round] = (fingerprint, digest)
        signature = secure_auth.sign_statement(
            self.private_key, secure_auth.SETUP, params, fingerprint, digest, entries
        )
        return {**entries, secure_auth.SETUP_SIGNATURE: signature}

    def aggregate(
        self, strategy, server_round: int, replies: list[Message], global_record: ArrayRecord
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server, info = self.servers.pop(server_round, None), self.rounds.get(server_round)
        stats = strategy._round(server_round)
        if server is None:  # the round was not started (too few clients sampled): configure_train said why
            return None, None
        try:
            weights, losses = self._keys(strategy, server, server_round, replies)
            directory = node_keyed(server.directory())
            got = self._exchange(strategy, server, SHARE_KEYS, server_round, {n: directory for n in server.keys})
            for node, content in got.items():
                server.receive_shares(node, _config(content))
            inboxes = server.inboxes()
            sends = {n: node_keyed(box) for n, box in inboxes.items()}
            extra = {n: {WEIGHT: min(weights[n], self.max_weight)} for n in inboxes}
            got = self._exchange(strategy, server, MASKED_INPUT, server_round, sends, extra)
            for node, content in got.items():
                server.receive_masked(node, _masked(content))
            request = server.unmask_request()
            request = ConfigRecord({k: [str(n) for n in v] for k, v in request.items()})
            got = self._exchange(strategy, server, UNMASK, server_round, {n: request for n in server.survivors})
            for node, content in got.items():
                server.receive_reveal(node, _config(content))
            weighted_sum, total_weight, summed = server.result()
            mean = self._checked_mean(server.params, weighted_sum, total_weight, summed, weights)
        except SecAggError as err:
            stats.skipped = f"secure aggregation stopped: {err}"
            log(WARNING, "round %s: skipped, the global adapter stays: %s", server_round, stats.skipped)
            return None, None
        finally:
            info.dropped = {str(n): reason for n, reason in server.dropped.items()}
            info.blamed = {str(n): reason for n, reason in server.blamed.items()}
        info.summed = stats.clients_trained = len(summed)
        info.max_quantization_error = max_mean_error(server.params, len(summed), total_weight)
        if len(summed) < max(1, strategy.min_train_nodes):
            stats.skipped = f"{len(summed)} client(s) summed, fewer than min-train-nodes {strategy.min_train_nodes}"
            log(WARNING, "round %s: skipped, the global adapter stays: %s", server_round, stats.skipped)
            return None, None
        clear = sum(weights[n] for n in summed)
        loss = sum(weights[n] * losses[n] for n in summed) / clear
        return add_delta(global_record, mean), MetricRecord({"train-loss": loss, "num-examples": total_weight})

    # --- stages ---------------------------------------------------------------------------
    def _keys(self, strategy, server: SecAggServer, server_round: int, replies: list[Message]):
        """Stage 1: the train replies, checked as plain ones; -> (weights, train losses)."""
        weights, losses = {}, {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():  # logged and counted by the strategy
                server.drop(node, f"error reply: {reply.error.reason[:80]}")
                continue
            try:
                problem = strategy._fingerprint_problem(reply)
                metrics = problem or clean_metrics(reply.content[METRICS], TRAIN_METRICS)
                if not isinstance(metrics, str):
                    metrics = strategy._bounded_weight(server_round, reply, metrics)
                if not isinstance(metrics, str) and secure_auth.SEALED not in reply.content:
                    metrics = "the reply carries no sealed secure-aggregation keys"
            except Exception as err:  # a checker never ends the run
                metrics = f"its check failed ({type(err).__name__})"
            if isinstance(metrics, str):
                log(WARNING, "round %s: rejected the update of node %s: %s", server_round, node, metrics)
                strategy._round(server_round).rejected_updates += 1
                server.drop(node, metrics)
                continue
            opened = self._opened(server, node, reply.content, secure_auth.KEYS)
            if opened is not None and server.receive_keys(node, _config(opened)):
                weights[node], losses[node] = int(metrics["num-examples"]), float(metrics["train-loss"])
        for node in server.params.participants:
            if node not in server.keys:
                server.drop(node, "no train reply")
        return weights, losses

    def _exchange(
        self,
        strategy,
        server: SecAggServer,
        message_type: str,
        server_round: int,
        records: dict[int, ConfigRecord],
        extra: dict[int, dict] | None = None,
    ) -> dict[int, RecordDict]:
        """One stage: a signed message to each node, sealed replies within `timeout`; error,
        silence or a reply that does not open drops the node."""
        messages, stage = [], STAGE_NAMES[message_type]
        fingerprint, digest = self.signed[server_round]
        for node, record in records.items():
            signed = {**record, **(extra or {}).get(node, {})}
            recipient = node if stage == secure_auth.MASKED else 0  # the inbox is per node
            signature = secure_auth.sign_statement(
                self.private_key, stage, server.params, fingerprint, digest, signed, recipient=recipient
            )
            config = ConfigRecord(
                {"server-round": server_round, secure_auth.SIGNATURE: signature, **(extra or {}).get(node, {})}
            )
            messages.append(
                Message(RecordDict({CONFIG: config, SECAGG: record}), message_type=message_type, dst_node_id=node)
            )
        got = {}
        for reply in strategy._grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if node not in records or node in got:
                continue
            if reply.has_error():
                _count(strategy, server_round, "secagg-error")
                server.drop(node, f"error reply at {message_type}: {reply.error.reason[:120]}")
                continue
            opened = self._opened(server, node, reply.content, stage)
            if opened is not None:
                got[node] = opened
        for node in records:
            if node not in got and node not in server.dropped:
                _count(strategy, server_round, "secagg-timeout")
                server.drop(node, f"no reply to {message_type} within {self.timeout:g} s")
        return got

    def _opened(self, server: SecAggServer, node: int, content: RecordDict, stage: str) -> RecordDict | None:
        """The stage records sealed in a reply; None (the node dropped, with the reason) if they do not open."""
        fingerprint, _ = self.signed[server.params.server_round]
        context = SealContext(server.params.run_id, server.params.server_round, node, fingerprint, stage)
        try:
            return secure_auth.open_stage(content, self.private_key, context)
        except SealError as err:
            server.drop(node, str(err))
            return None

    def _checked_mean(
        self,
        params: SecAggParams,
        weighted_sum: np.ndarray,
        total_weight: int,
        summed: tuple[int, ...],
        weights: dict[int, int],
    ) -> np.ndarray:
        """sum(w' x) / sum(w') (d,), if the unmasked sum is plausible; else SecAggError."""
        clear = sum(min(weights[n], params.max_weight) for n in summed)
        if total_weight != clear:
            raise SecAggError(f"the summed weight {total_weight} is not the clients' {clear}")
        bound = params.clipping_range * params.max_weight * len(summed)  # |sum w'x| per element
        if not np.isfinite(weighted_sum).all() or np.abs(weighted_sum).max() > bound * (1 + 1e-9):
            raise SecAggError("the unmasked sum is not finite or exceeds the clipping bound")
        return weighted_sum / total_weight  # (d,)


def _config(content: RecordDict) -> dict:
    """The reply's "secagg" record as a plain dict, {} when absent or not a ConfigRecord."""
    try:
        record = content[SECAGG]
        return dict(record) if isinstance(record, ConfigRecord) else {}
    except Exception:
        return {}


def _masked(content: RecordDict) -> object:
    """The reply's masked vector as numpy, or None (SecAggServer rejects it)."""
    try:
        record = content[MASKED]
        return (
            record[MASKED_Y].numpy() if isinstance(record, ArrayRecord) and list(record.keys()) == [MASKED_Y] else None
        )
    except Exception:
        return None


def _count(strategy, server_round: int, kind: str) -> None:
    failures = strategy._round(server_round).failures
    failures[kind] = failures.get(kind, 0) + 1
