"""Federated rounds in one process, for any method of benchmarks/federated_methods.py.

The cheapest like-for-like federation of LoRA-XS *and* PEFT LoRA: the same clients are sampled
as `server/strategy.py` samples them (seeded by (seed, round), by partition id), each trains on its
partition of `shared/federation/node_data.py` with the loader seed of `client/local_round.py` and
`shared/training.py:train`, and the server takes the example-weighted mean of every tensor
(FedAvg; for PEFT LoRA of A and of B apart, as FlowerTune does). No Flower, Ray or messages in
the loop: the bytes of each method's messages are measured apart (`round_bytes`).
Centralized training sees the same number of examples, drawn from the union of the clients'
training splits.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from datasets import concatenate_datasets

from benchmarks.federated_methods import Federated, weighted_mean
from client.local_round import shuffle_seed
from server.partition_sampling import SAMPLE_STREAM
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.federation.node_data import held_out_union, simulated_node_data
from shared.federation.run_config import FederationConfig
from shared.training import TrainConfig, evaluate, train


def sampled_partitions(config: FederationConfig, server_round: int) -> list[int]:
    """The partitions `LoraXSStrategy.sample` trains in `server_round` (every node connected)."""
    n = config.num_clients
    size = min(n, max(int(n * config.fraction_train), config.min_train_nodes))
    rng = np.random.default_rng([config.seed, server_round, SAMPLE_STREAM, 0])
    return sorted(int(i) for i in rng.choice(n, size=size, replace=False))


@dataclass(frozen=True)
class LoopResult:
    accuracy: float
    examples_seen: int  # training examples over all rounds and clients
    train_seconds: float


def run_federated(
    federated: Federated,
    config: FederationConfig,
    train_config: TrainConfig,
    tokenizer,
    eval_loader,
    aggregate: Callable[[dict, list[dict], list[int], int], dict] | None = None,
) -> LoopResult:
    """`config.num_server_rounds` rounds; the final global model's held-out accuracy. `aggregate`
    (global state, client states, weights, round) -> new global state; default FedAvg."""
    global_state = federated.state()
    seen, seconds = 0, 0.0
    for server_round in range(1, config.num_server_rounds + 1):
        states, weights = [], []
        for partition in sampled_partitions(config, server_round):
            data = simulated_node_data(config, partition)
            federated.load(global_state)
            seed = shuffle_seed(config, server_round, partition)
            loader = make_loader(
                data.train, tokenizer, config.task, config.batch_size, config.max_length, shuffle=True, seed=seed
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # dropout, as client/local_round.py seeds it
                result = train(federated.model, loader, train_config)
            states.append(federated.state())
            weights.append(len(data.train))
            seen += result.examples
            seconds += result.seconds
        global_state = (
            aggregate(global_state, states, weights, server_round)
            if aggregate is not None
            else weighted_mean(states, weights)
        )
    federated.load(global_state)
    return LoopResult(evaluate(federated.model, eval_loader).accuracy, seen, seconds)


def run_centralized(
    federated: Federated, config: FederationConfig, train_config: TrainConfig, tokenizer, eval_loader, examples: int
) -> LoopResult:
    """One model trained on the union of every client's training split for `examples` examples."""
    pooled = concatenate_datasets(
        [simulated_node_data(config, i).train.select_columns(["text", "label"]) for i in range(config.num_clients)]
    )
    loader = make_loader(
        pooled, tokenizer, config.task, config.batch_size, config.max_length, shuffle=True, seed=config.seed
    )
    steps = math.ceil(examples / config.batch_size)
    capped = TrainConfig(epochs=train_config.epochs, lr=train_config.lr, head_lr=train_config.head_lr, max_steps=steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        result = train(federated.model, loader, capped)
    return LoopResult(evaluate(federated.model, eval_loader).accuracy, result.examples, result.seconds)


def held_out_loader(config: FederationConfig, tokenizer, max_examples: int):
    """The server's held-out set (the union of the clients' test splits, a seeded sample)."""
    held_out, _ = held_out_union(config, max_examples)
    return make_loader(held_out, tokenizer, config.task, EVAL_BATCH_SIZE, config.max_length)
