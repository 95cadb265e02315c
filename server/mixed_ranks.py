"""Mixed ranks, per-entry aggregation: each entry of R averaged over the clients that hold it
(shared/loraxs/mixed_rank.py), then the mean-based aggregator's step from that mean."""

from flwr.app import Array, ArrayRecord, Message, MessageType
from flwr.serverapp.strategy import FedAvg

from shared.federation.protocol import METRICS, STACKED_R, cast_record
from shared.loraxs.mixed_rank import per_entry_from_zero_padded


class MixedRanks:
    """Per-entry means of the round's replies; uses `_sent` and `_stepped_from_mean`."""

    def _per_entry_round(self, server_round: int, accepted: list[Message], ranks: dict[int, int]):
        """Mixed ranks, per-entry: the per-entry weighted mean of the replies, then (a mean-based
        aggregator: FedAvgM, FedAdam, ...) the aggregator's step from that mean as its one reply."""
        arrays, metrics = FedAvg.aggregate_train(self, server_round, accepted)  # the zero-padded R
        if arrays is None:
            return None, None
        return self._stepped_from_mean(server_round, self._per_entry(arrays, accepted, ranks), metrics)

    def _per_entry(self, arrays: ArrayRecord, accepted: list[Message], ranks: dict[int, int]) -> ArrayRecord:
        """Mixed ranks, per-entry: each entry of R averaged over the clients that hold it."""
        expected, _ = self._sent[MessageType.TRAIN]
        full = int(expected[STACKED_R].shape[-1])
        node_ranks = [ranks.get(r.metadata.src_node_id, full) for r in accepted]
        weights = [float(r.content[METRICS]["num-examples"]) for r in accepted]
        stacked = per_entry_from_zero_padded(
            arrays[STACKED_R].numpy(), node_ranks, weights, cast_record(expected, "fp32")[STACKED_R].numpy()
        )
        return ArrayRecord({k: Array(stacked) if k == STACKED_R else v for k, v in arrays.items()})
