"""The data one node trains and evaluates on.

Deployment (`data-dir` in the node config): the device's own folder, split by `load_local_folder`.
Simulation (`partition-id` / `num-partitions`): partition `partition-id` of the configured
dataset, split 80/20 with the run's seed; in the concept-shift scenario a seeded share of the
partitions has every label flipped, in train and test alike (users who disagree with the rest).
Everything is cached per process: a Ray worker loads and partitions the dataset once.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datasets import Dataset, concatenate_datasets

from shared.data.catalog import load_full_dataset
from shared.data.local_folder import load_local_folder
from shared.data.partition import partition_dataset
from shared.data.text_splits import split_train_test
from shared.errors import LoraXSError
from shared.federation.run_config import FederationConfig

TEST_FRACTION = 0.2
SHIFT_STREAM = 7  # the concept-shift draw uses its own random stream, apart from partitioning


@dataclass(frozen=True)
class NodeData:
    train: Dataset
    test: Dataset
    labels: list[str] | None  # class names (index == id), None for causal-lm
    shifted: bool  # labels flipped by the concept-shift scenario


def node_data(config: FederationConfig, node_config: dict) -> NodeData:
    """This node's splits; LoraXSError when its data cannot serve this federation."""
    if node_config.get("data-dir"):
        return _local_folder_data(config, str(node_config["data-dir"]))
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise LoraXSError("the node config has neither data-dir nor partition-id/num-partitions")
    num_partitions = int(node_config["num-partitions"])
    if num_partitions != config.num_clients:
        raise LoraXSError(
            f"the federation has {num_partitions} SuperNodes but num-clients is {config.num_clients}; set them equal"
        )
    return simulated_node_data(config, int(node_config["partition-id"]))


@lru_cache(maxsize=4)
def _local_folder_data(config: FederationConfig, data_dir: str) -> NodeData:
    splits = load_local_folder(data_dir, task=config.task, seed=config.seed)
    wanted = config.label_names()
    if wanted and splits.labels != wanted:
        raise LoraXSError(
            f"this node's labels {splits.labels} differ from the federation's {wanted}; "
            "every node must use the same label set"
        )
    return NodeData(splits.train, splits.test, splits.labels, shifted=False)


@lru_cache(maxsize=2)
def _partitions(config: FederationConfig) -> tuple[tuple[Dataset, ...], list[str] | None]:
    full, labels = load_full_dataset(config.dataset, task=config.task, seed=config.seed)
    wanted = config.label_names()
    if wanted and labels is not None and labels != wanted:
        raise LoraXSError(f"dataset {config.dataset!r} has labels {labels}, not {wanted}")
    parts = partition_dataset(
        full, config.num_clients, config.partition, alpha=config.dirichlet_alpha, seed=config.seed
    )
    return tuple(parts), labels


@lru_cache(maxsize=512)
def simulated_node_data(config: FederationConfig, partition_id: int) -> NodeData:
    parts, labels = _partitions(config)
    if not 0 <= partition_id < len(parts):
        raise LoraXSError(f"partition-id {partition_id} is outside 0..{len(parts) - 1}")
    train, test = split_train_test(parts[partition_id], test_fraction=TEST_FRACTION, seed=config.seed)
    shifted = partition_id in shifted_partitions(config)
    if shifted:
        train, test = flip_labels(train, len(labels)), flip_labels(test, len(labels))
    return NodeData(train, test, labels, shifted)


def shifted_partitions(config: FederationConfig) -> frozenset[int]:
    """The partitions whose labels the concept-shift scenario flips (empty without it)."""
    if config.scenario != "concept-shift":
        return frozenset()
    count = round(config.shift_fraction * config.num_clients)
    rng = np.random.default_rng([config.seed, SHIFT_STREAM])
    return frozenset(int(i) for i in rng.choice(config.num_clients, size=count, replace=False))


def flip_labels(ds: Dataset, num_classes: int) -> Dataset:
    """Binary: y -> 1 - y; K classes: y -> (y + 1) % K."""
    flipped = [(y + 1) % num_classes for y in ds["label"]]
    return ds.remove_columns("label").add_column("label", flipped)


def held_out_union(config: FederationConfig, max_examples: int) -> tuple[Dataset, list[str] | None]:
    """The union of every simulated client's test split (shift applied), a seeded sample of at
    most `max_examples`: the server's held-out set, disjoint from all training data."""
    tests = [simulated_node_data(config, i).test for i in range(config.num_clients)]
    columns = ["text", "label"] if config.task == "seq-cls" else ["text"]
    union = concatenate_datasets([test.select_columns(columns) for test in tests])
    if len(union) > max_examples:
        union = union.shuffle(seed=config.seed).select(range(max_examples))
    return union, _partitions(config)[1]
