"""One node's part of a round, without Flower: train the global adapter on the node's data,
evaluate it, and derive the personal adapter. Uses the shared `train` / `evaluate` functions."""

from dataclasses import dataclass

import torch
from torch import nn

from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.federation.node_data import NodeData
from shared.federation.run_config import FederationConfig
from shared.loraxs.model import adapter_state, load_adapter_state
from shared.personal_training import MIN_EXAMPLES, personal_training
from shared.training import EvalResult, TrainConfig, TrainResult, evaluate, train


@dataclass(frozen=True)
class LocalUpdate:
    state: dict[str, torch.Tensor]  # the adapter after local training: what is uploaded
    result: TrainResult


def shuffle_seed(config: FederationConfig, server_round: int, partition: int) -> int:
    return config.seed * 1_000_003 + server_round * 1_009 + partition


def train_update(
    model: nn.Module,
    global_state: dict,
    data: NodeData,
    tokenizer,
    config: FederationConfig,
    seed: int,
    device: torch.device,
) -> LocalUpdate:
    """Global adapter -> `local-epochs` over the node's train split."""
    result = _train_from(
        model, global_state, data, tokenizer, config, config.train_config(), seed, dropout_seed=seed, device=device
    )
    return LocalUpdate(adapter_state(model), result)


def derive_personal(
    model: nn.Module,
    global_state: dict,
    data: NodeData,
    tokenizer,
    config: FederationConfig,
    seed: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The personal adapter: the global one trained on the node's data by client.run's recipe
    (validation split, early stopping); never worse than the global one on that validation."""
    load_adapter_state(model, global_state)
    if len(data.train) < MIN_EXAMPLES:
        return adapter_state(model)  # too few to hold any out: the global adapter is the personal one
    personal_training(
        model,
        data.train,
        tokenizer,
        config.task,
        config.personal_training_config(seed),
        device,
        start="the global adapter",
    )
    return adapter_state(model)


def _train_from(
    model: nn.Module,
    state: dict,
    data: NodeData,
    tokenizer,
    config: FederationConfig,
    train_config: TrainConfig,
    seed: int,
    dropout_seed: int,
    device: torch.device,
) -> TrainResult:
    """`state` loaded, then `train_config` over the node's train split (shuffled with `seed`)."""
    load_adapter_state(model, state)
    loader = make_loader(
        data.train, tokenizer, config.task, config.batch_size, config.max_length, shuffle=True, seed=seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dropout_seed)  # dropout
        return train(model, loader, train_config, device)


def evaluate_state(
    model: nn.Module,
    state: dict,
    data: NodeData,
    tokenizer,
    config: FederationConfig,
    device: torch.device,
) -> EvalResult:
    """An adapter on the node's held-out split."""
    load_adapter_state(model, state)
    loader = make_loader(data.test, tokenizer, config.task, EVAL_BATCH_SIZE, config.max_length)
    return evaluate(model, loader, device)
