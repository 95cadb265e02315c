"""The adapters the benchmarks federate side by side, and the Flower messages each one sends.

    loraxs  the product: `build_adapted_model`, its state = every r x r R + head, packed by
            `shared/federation/protocol.py:pack_adapter` (what the ServerApp sends), the factors
            in "basis" on a node's first message (`pack_basis`).
    lora    PEFT LoRA on the same target modules, federated the FlowerTune way: the state is
            `get_peft_model_state_dict` (every lora_A (r, in) and lora_B (out, r)) + the head,
            one array each in the message's ArrayRecord; FedAvg averages A and B separately.
    full    full fine-tuning: every parameter of the model travels.

Every method trains through `shared/training.py:train` (AdamW, `lr` for the adapter, `head_lr`
for the head) and is measured through `shared/training.py:evaluate`. Bytes come from
`server/traffic.py:wire_bytes` on real `flwr.app.Message`s, never from shapes.
"""

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from server.traffic import wire_bytes
from shared.base_models import DEFAULT_MODEL, build_adapted_model, load_base_model
from shared.federation.protocol import (
    ARRAYS,
    BASIS,
    CONFIG,
    METRICS,
    NUMPY_DTYPES,
    STATUS,
    pack_adapter,
    pack_basis,
)
from shared.loraxs.config import BERT_TARGETS, LoraXSConfig
from shared.loraxs.model import adapter_state, head_parameter_names, load_adapter_state

METHODS = ("loraxs", "lora", "full")
LORA_ALPHA = 16.0  # alpha of both LoRA-XS and PEFT LoRA, at every rank (the run config's lora-alpha)


@dataclass
class Federated:
    """One model of one method, with what of it travels."""

    method: str
    rank: int
    model: nn.Module
    basis_record: ArrayRecord | None = None  # LoRA-XS only: the frozen factors, float32

    @property
    def name(self) -> str:
        return "full fine-tuning" if self.method == "full" else f"{self.label} r={self.rank}"

    @property
    def label(self) -> str:
        return {"loraxs": "LoRA-XS", "lora": "PEFT LoRA", "full": "full"}[self.method]

    def state(self) -> dict[str, torch.Tensor]:
        """What a client uploads (and the server sends back), as float32 copies."""
        if self.method == "loraxs":
            return {k: v.detach().clone() for k, v in adapter_state(self.model).items()}
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if self.method == "loraxs":
            load_adapter_state(self.model, state)
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def record(self, state: dict[str, torch.Tensor], update_dtype: str = "fp32") -> ArrayRecord:
        """The message's "arrays": LoRA-XS stacks its R matrices (the product's protocol); PEFT
        LoRA and full fine-tuning send one array per tensor, as FlowerTune does."""
        if self.method == "loraxs":
            return pack_adapter(state, update_dtype)
        dtype = NUMPY_DTYPES[update_dtype]
        return ArrayRecord({k: Array(v.float().cpu().numpy().astype(dtype)) for k, v in state.items()})

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def build(method: str, rank: int, labels: list[str], seed: int = 0) -> Federated:
    """A fresh model of `method` (rank ignored for full fine-tuning), head seeded by `seed`."""
    if method == "loraxs":
        model, basis = build_adapted_model(
            DEFAULT_MODEL, "seq-cls", LoraXSConfig(rank=rank, alpha=LORA_ALPHA), labels, seed=seed
        )
        return Federated(method, rank, model, pack_basis(basis))
    model = load_base_model(DEFAULT_MODEL, "seq-cls", len(labels), seed)
    if method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        # In place (no PeftModel wrapper): parameter names stay "bert....lora_A.default.weight",
        # so `head_parameter_names` finds the head and the optimizer gives it `head_lr`.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_adapter_in_model(
                LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(BERT_TARGETS)), model
            )
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name or name in head_parameter_names(model))
    elif method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return Federated(method, rank, model)


def weighted_mean(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """FedAvg: the example-weighted mean of every tensor (for PEFT LoRA: of A and of B, apart)."""
    total = float(sum(weights))
    return {name: sum(s[name].double() * (w / total) for s, w in zip(states, weights)).float() for name in states[0]}


def train_message(
    federated: Federated, state: dict, server_round: int, node_id: int, update_dtype: str, with_basis: bool
) -> Message:
    """The server's train message to one node, built as `server/strategy.py` builds it."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp
    content = RecordDict(
        {
            ARRAYS: federated.record(state, update_dtype),
            CONFIG: ConfigRecord({"server-round": server_round, "fingerprint": "0" * 64}),
        }
    )
    if with_basis and federated.basis_record is not None:
        content[BASIS] = federated.basis_record
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)


def train_reply(
    federated: Federated, state: dict, message: Message, examples: int, loss: float, update_dtype: str
) -> Message:
    """A client's train reply, built as `client/app.py` builds it."""
    content = RecordDict(
        {
            ARRAYS: federated.record(state, update_dtype),
            METRICS: MetricRecord({"num-examples": examples, "train-loss": float(loss)}),
            STATUS: ConfigRecord({"fingerprint": "0" * 64}),
        }
    )
    message.metadata.__dict__["_message_id"] = "1" * 64  # a delivered message has an id to reply to
    return Message(content, reply_to=message)


@dataclass(frozen=True)
class RoundBytes:
    """One client's bytes in one round, as `wire_bytes` counts them."""

    down: int  # a round's train message without the factors
    up: int  # the train reply
    factors: int  # the extra bytes of the first message to a node (LoRA-XS shipping its factors)
    payload: int  # raw tensor bytes of the update (no headers)


def trained_like(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """`state` plus small seeded noise: every tensor distinct, as after a round of training.
    (Untrained PEFT LoRA B matrices are all zeros, and Flower's content-addressed objects would
    carry identical arrays once: an untrained state undercounts what a trained one costs.)"""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def round_bytes(federated: Federated, update_dtype: str = "fp32", examples: int = 64) -> RoundBytes:
    state = trained_like(federated.state())
    plain = train_message(federated, state, 1, 1001, update_dtype, with_basis=False)
    first = train_message(federated, state, 1, 1001, update_dtype, with_basis=True)
    reply = train_reply(federated, state, plain, examples, 0.5, update_dtype)
    payload = sum(
        int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in federated.record(state, update_dtype).values()
    )
    return RoundBytes(
        down=wire_bytes(plain), up=wire_bytes(reply), factors=wire_bytes(first) - wire_bytes(plain), payload=payload
    )
