"""The run's checkpoint, rewritten atomically after every round: `<out>/checkpoint.safetensors`.

It holds the global adapter as it travels ("lora_R", head tensors; fp32) and, as a uint8 tensor
"__state__", a JSON document: the round, the run config, the strategy's state (per-round stats,
evaluations, which partitions hold the factors), the byte counters and the per-round measures so
far. Sampling is a pure function of (seed, round) and client shuffles of (seed, round, partition),
so no RNG state needs saving. A resumed run (`resume-from`) must have the same config but for
num-server-rounds (and the folders); anything else is refused with one line.
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from safetensors.torch import save as save_bytes

from server.run_folder import CHECKPOINT
from server.traffic import PhaseTraffic, TrafficMeter
from shared.artifacts.atomic_write import write_atomically
from shared.artifacts.blob import read_blob, read_file
from shared.errors import LoraXSError
from shared.federation.run_config import FederationConfig

STATE = "__state__"
MAY_DIFFER = ("num-server-rounds", "resume-from", "out-dir")  # between a run and its resumption


def save_checkpoint(
    out_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    config: FederationConfig,
    strategy_state: dict,
    meter: TrafficMeter,
    rounds: dict[int, dict],
    partitions: dict[int, int] | None = None,
) -> None:
    """`partitions`: node id -> partition id; the traffic's per-node books are kept by partition
    (node ids change when the run is resumed in a new process), nodes without one by node id."""
    of = lambda node: (partitions or {}).get(node)
    state = {
        "round": server_round,
        "config": config.to_run_config(),
        "order": list(arrays.keys()),
        "strategy": strategy_state,
        "traffic": {
            "phases": [[r, kind, asdict(p)] for (r, kind), p in meter.phases.items()],
            "bases_per_partition": [[of(node), n] for node, n in meter.bases_per_node.items() if of(node) is not None],
            "partitions_contacted": sorted({of(n) for n in meter.nodes_contacted if of(n) is not None}),
            "partitions_derived": sorted({of(n) for n in meter.nodes_derived if of(n) is not None}),
            "bases_per_node": [[node, n] for node, n in meter.bases_per_node.items() if of(node) is None],
            "nodes_contacted": sorted(n for n in meter.nodes_contacted if of(n) is None),
            "nodes_derived": sorted(n for n in meter.nodes_derived if of(n) is None),
        },
        "rounds": {str(r): m for r, m in rounds.items()},
    }
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v.numpy(), dtype=np.float32)) for k, v in arrays.items()}
    tensors[STATE] = torch.frombuffer(bytearray(json.dumps(state).encode()), dtype=torch.uint8)
    write_atomically(out_dir / CHECKPOINT, save_bytes(tensors), "checkpoint")


class Checkpoint:
    """A loaded checkpoint: `round`, `arrays` (ArrayRecord), `strategy` (dict), and restorers."""

    def __init__(self, folder: Path):
        path = Path(folder) / CHECKPOINT
        tensors, _ = read_blob(read_file(path, "checkpoint"), str(path), "checkpoint")
        try:
            state = json.loads(tensors.pop(STATE).numpy().tobytes())
            self.round = int(state["round"])
            self.config = dict(state["config"])
            self.strategy = state["strategy"]
            self.traffic = state["traffic"]
            self.rounds = {int(r): m for r, m in state["rounds"].items()}
            self.arrays = ArrayRecord({k: Array(tensors[k].numpy()) for k in state["order"]})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise LoraXSError(f"{path} is not a valid checkpoint ({type(err).__name__}: {err})") from None

    def check_config(self, config: FederationConfig) -> None:
        """One line naming what differs, if anything but num-server-rounds does."""
        now = config.to_run_config()
        differ = sorted(
            k for k in set(now) | set(self.config) if k not in MAY_DIFFER and now.get(k) != self.config.get(k)
        )
        if differ:
            shown = ", ".join(f"{k} {self.config.get(k)!r} -> {now.get(k)!r}" for k in differ[:3])
            raise LoraXSError(
                f"cannot resume: the config differs from the checkpoint's ({shown}); only num-server-rounds may change"
            )
        if config.num_server_rounds < self.round:
            raise LoraXSError(
                f"cannot resume: the checkpoint is at round {self.round}, past "
                f"num-server-rounds {config.num_server_rounds}"
            )

    def restore_traffic(self, meter: TrafficMeter, partitions: dict[int, int] | None = None) -> None:
        """`partitions`: this process's node id -> partition id, to put the books kept by
        partition back on today's node ids (so a resumed run counts each node once)."""
        node_of = {p: n for n, p in (partitions or {}).items()}
        traffic = self.traffic
        for r, kind, phase in traffic["phases"]:
            meter.phases[(int(r), str(kind))] = PhaseTraffic(**phase)
        for node, n in traffic["bases_per_node"]:
            meter.bases_per_node[int(node)] = int(n)
        for partition, n in traffic.get("bases_per_partition", []):
            node = node_of.get(int(partition), -1 - int(partition))  # a partition gone: still counted, once
            meter.bases_per_node[node] += int(n)
        meter.nodes_contacted.update(int(n) for n in traffic["nodes_contacted"])
        meter.nodes_contacted.update(node_of.get(int(p), -1 - int(p)) for p in traffic.get("partitions_contacted", []))
        meter.nodes_derived.update(int(n) for n in traffic.get("nodes_derived", []))
        meter.nodes_derived.update(node_of.get(int(p), -1 - int(p)) for p in traffic.get("partitions_derived", []))
