"""The recipe's onnxruntime backend (shared/recipe/backend.py's protocol): the exported
training-step graph gives the loss and the gradients of every R and the head, the feature graph
what the head sees. numpy in, numpy out; onnxruntime only, no torch.
"""

import re

import numpy as np

from client.onnx_training.folder import TrainingFolder, ort_session
from shared.errors import LoraXSError

MICRO_TOKENS = 1024  # padded tokens per run of the step graph: its memory grows with batch x length^2


class OnnxBackend:
    def __init__(self, folder: TrainingFolder, threads: int = 0, optimization: str = "all", arena: bool = False):
        if folder.description["task"] != "seq-cls":
            raise LoraXSError(f"{folder.path} holds {folder.description['task']} artifacts; "
                              "the onnx runtime trains classifiers (seq-cls) only: use --runtime torch")
        self.folder = folder
        self.layer_names = folder.layers
        self.trainable_layers = np.ones(len(self.layer_names), dtype=bool)
        self.token_names = folder.token_inputs
        self.hidden_size = int(folder.description["hidden_size"])
        self.threads, self.optimization, self.arena = threads, optimization, arena
        self._sessions: dict = {}

    def _session(self, kind: str):
        """Opened on first use: a training message never loads the feature graph, an evaluation
        never the step (each holds its own copy of the frozen weights in memory)."""
        if kind not in self._sessions:
            session = ort_session(self.folder.graph(kind), self.threads, self.optimization, self.arena)
            self._sessions[kind] = (session, [i.name for i in session.get_inputs()])
        return self._sessions[kind]

    def train_top_blocks(self, blocks: int | None) -> None:
        """Only the R of the top `blocks` transformer blocks train (their gradients; the others
        stay as given), as the PyTorch backend's `train_blocks`. The graph still computes every
        gradient: the same numbers, no speed-up."""
        index = [int(m.group(1)) if (m := re.search(r"\.layer\.(\d+)\.", name)) else -1 for name in self.layer_names]
        count = max(index) + 1
        if blocks is None or count == 0 or blocks >= count:
            self.trainable_layers = np.ones(len(self.layer_names), dtype=bool)
            return
        self.trainable_layers = np.array([i >= count - blocks for i in index])

    def _tokens(self, batch: dict) -> dict[str, np.ndarray]:
        tokens = {}
        for name in self.token_names:
            value = batch.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros_like(batch["input_ids"])
            tokens[name] = np.ascontiguousarray(value, dtype=np.int64)  # (B, T)
        return tokens

    def _check_r(self, params: dict) -> np.ndarray:
        lora_R = np.ascontiguousarray(params["lora_R"], dtype=np.float32)  # (L, r, r)
        rank = self.folder.description["rank"]
        if lora_R.shape != (len(self.layer_names), rank, rank):
            raise LoraXSError(f"lora_R of shape {lora_R.shape} does not fit these artifacts "
                              f"({len(self.layer_names)} layers at rank {rank})")
        return lora_R

    def features(self, batch: dict, params: dict) -> np.ndarray:
        feed = {"lora_R": self._check_r(params), **self._tokens(batch)}
        session, names = self._session("features")
        return session.run(["features"], {k: feed[k] for k in names})[0]  # (B, H)

    def loss_and_grads(self, batch: dict, params: dict, logit_offset: np.ndarray | None = None):
        """The batch in micro-batches of at most MICRO_TOKENS padded tokens, their losses and
        gradients weighted by their share of the rows: the mean over the whole batch (the loss is
        a mean, so this is the same sum, regrouped)."""
        weight = np.ascontiguousarray(params["head_weight"], dtype=np.float32)  # (C, H)
        labels = np.ascontiguousarray(batch["labels"], dtype=np.int64)  # (B,)
        if logit_offset is None:
            logit_offset = np.zeros((len(labels), weight.shape[0]), dtype=np.float32)
        fixed = {"lora_R": self._check_r(params), "head_weight": weight,
                 "head_bias": np.ascontiguousarray(params["head_bias"], dtype=np.float32)}
        tokens = self._tokens(batch)
        rows = max(1, MICRO_TOKENS // max(1, tokens["input_ids"].shape[1]))
        session, names = self._session("step")
        total, grads = 0.0, None
        for start in range(0, len(labels), rows):
            part = slice(start, start + rows)
            feed = {**fixed, "labels": labels[part],
                    "logit_offset": np.ascontiguousarray(logit_offset[part], dtype=np.float32),
                    **{k: np.ascontiguousarray(v[part]) for k, v in tokens.items()}}
            share = len(labels[part]) / len(labels)
            loss, grad_r, grad_w, grad_b = session.run(
                ["loss", "grad_lora_R", "grad_head_weight", "grad_head_bias"], {k: feed[k] for k in names})
            total += share * float(loss)
            parts = (grad_r, grad_w, grad_b)
            grads = [share * g for g in parts] if grads is None else [a + share * g for a, g in zip(grads, parts)]
        grad_r, grad_w, grad_b = grads
        if not self.trainable_layers.all():
            grad_r = grad_r * self.trainable_layers[:, None, None]
        return total, {"lora_R": grad_r, "head_weight": grad_w, "head_bias": grad_b}
