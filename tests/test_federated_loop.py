"""The benchmarks' in-process federation samples the clients the ServerApp samples, and averages
the way FedAvg does."""

from dataclasses import replace

import pytest
import torch
from flwr.app import ArrayRecord

from benchmarks.federated_loop import sampled_partitions
from benchmarks.federated_methods import weighted_mean
from server.strategy import LoraXSStrategy
from shared.federation.run_config import FederationConfig


class NodesOnly:
    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return self.node_ids


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 3])
def test_same_partitions_as_the_strategy(fraction, seed):
    config = replace(FederationConfig(), fraction_train=fraction, seed=seed)
    strategy = LoraXSStrategy(
        ArrayRecord(),
        "f" * 64,
        "fp32",
        (),
        seed=seed,
        fraction_train=fraction,
        min_train_nodes=config.min_train_nodes,
        min_available_nodes=config.num_clients,
    )
    nodes = [5000 + 7 * i for i in range(config.num_clients)]
    strategy.partitions = {node: i for i, node in enumerate(reversed(nodes))}  # node ids unrelated to partitions
    for server_round in (1, 2, 7):
        chosen = strategy.sample(NodesOnly(nodes), fraction, config.min_train_nodes, server_round, stream=0)
        assert sorted(strategy.partitions[n] for n in chosen) == sampled_partitions(config, server_round)


def test_weighted_mean_is_fedavg():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[0.0]])}
    b = {"x": torch.tensor([3.0, 6.0]), "y": torch.tensor([[4.0]])}
    mean = weighted_mean([a, b], [1, 3])
    assert torch.allclose(mean["x"], torch.tensor([2.5, 5.0]))
    assert torch.allclose(mean["y"], torch.tensor([[3.0]]))


def test_a_round_draws_from_the_connected_nodes_and_does_not_wait_for_one_that_left(monkeypatch):
    """After discovery, a node that left is not waited for (a round once stalled 300 s, then
    stopped the run); fewer connected nodes than the round's minimum is still an error."""
    import server.partition_sampling as sampling_module
    from shared.errors import LoraXSError

    monkeypatch.setattr(sampling_module, "NODES_WAIT_SECONDS", 0.0)
    strategy = LoraXSStrategy(
        ArrayRecord(), "f" * 64, "fp32", (), seed=0, fraction_train=1.0, min_train_nodes=2, min_available_nodes=4
    )
    strategy.partitions = {10: 0, 11: 1, 12: 2, 13: 3}
    assert strategy.sample(NodesOnly([10, 11, 12]), 1.0, 2, server_round=1, stream=0) == [10, 11, 12]
    with pytest.raises(LoraXSError, match="only 1 of 2 nodes connected"):
        strategy.sample(NodesOnly([10]), 1.0, 2, server_round=1, stream=0)
