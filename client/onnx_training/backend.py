"""The recipe's onnxruntime backend (shared/recipe/backend.py's protocol): the exported
training-step graph gives the loss and the gradients of every R and the head, the feature graph
what the head sees. numpy in, numpy out; onnxruntime only, no torch.

With `train_top_blocks(k)` where the folder holds graphs split at k (client.export --training
--train-blocks k, the recipe's default): the lower graph runs once per text and its hidden
states are cached unpadded (keyed by `example_index` and the lower R's bytes, as the PyTorch
backend's cache); a step and a feature pass run the upper graphs over the top k blocks alone.
"""

import hashlib
import re

import numpy as np

from client.onnx_training.folder import TrainingFolder, ort_session
from shared.errors import LoraXSError
from shared.recipe.memory import keep_large_buffers_off_the_heap

MICRO_TOKENS = 1024  # padded tokens per run of the step graph: its memory grows with batch x length^2


class OnnxBackend:
    def __init__(self, folder: TrainingFolder, threads: int = 0, optimization: str = "all", arena: bool = False):
        if folder.description["task"] != "seq-cls":
            raise LoraXSError(
                f"{folder.path} holds {folder.description['task']} artifacts; "
                "the onnx runtime trains classifiers (seq-cls) only: use --runtime torch"
            )
        keep_large_buffers_off_the_heap()  # without an arena, onnxruntime's buffers come from malloc
        self.folder = folder
        self.layer_names = folder.layers
        self.trainable_layers = np.ones(len(self.layer_names), dtype=bool)
        self.token_names = folder.token_inputs
        self.hidden_size = int(folder.description["hidden_size"])
        self.threads, self.optimization, self.arena = threads, optimization, arena
        self._sessions: dict = {}
        self.split: dict | None = None  # the folder's split, while train_top_blocks matches it
        self.cache: dict[int, np.ndarray] = {}  # example_index -> (T_i, H) hidden states entering the top blocks
        self.cache_key = b""  # digest of the lower R the cache was computed with

    def _session(self, kind: str):
        """Opened on first use: a training message never loads the feature graph, an evaluation
        never the step (each holds its own copy of the frozen weights in memory)."""
        if kind not in self._sessions:
            session = ort_session(self.folder.graph(kind), self.threads, self.optimization, self.arena)
            self._sessions[kind] = (session, [i.name for i in session.get_inputs()])
        return self._sessions[kind]

    def train_top_blocks(self, blocks: int | None) -> None:
        """Only the R of the top `blocks` transformer blocks train (their gradients; the others
        stay as given), as the PyTorch backend's `train_blocks`. Where the folder is split at
        `blocks`, the lower blocks run once per text; otherwise the full graph computes every
        gradient and the lower ones are dropped (the same numbers, no speed-up)."""
        self.forget()
        split = self.folder.split
        if split is not None and blocks == split["train_blocks"]:
            self.split = split
            self.trainable_layers = np.zeros(len(self.layer_names), dtype=bool)
            self.trainable_layers[split["upper_layers"]] = True
            return
        self.split = None
        index = [int(m.group(1)) if (m := re.search(r"\.layer\.(\d+)\.", name)) else -1 for name in self.layer_names]
        count = max(index) + 1
        if blocks is None or count == 0 or blocks >= count:
            self.trainable_layers = np.ones(len(self.layer_names), dtype=bool)
            return
        self.trainable_layers = np.array([i >= count - blocks for i in index])

    def forget(self) -> None:
        """Drop the cached hidden states."""
        self.cache.clear()
        self.cache_key = b""

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
            raise LoraXSError(
                f"lora_R of shape {lora_R.shape} does not fit these artifacts "
                f"({len(self.layer_names)} layers at rank {rank})"
            )
        return lora_R

    def features(self, batch: dict, params: dict) -> np.ndarray:
        lora_R = self._check_r(params)
        if self.split:
            feed = {
                "lora_R_upper": lora_R[self.split["upper_layers"]],
                "hidden": self._entering_top(batch, lora_R),
                "attention_mask": self._tokens(batch)["attention_mask"],
            }
            session, names = self._session("upper_features")
        else:
            feed = {"lora_R": lora_R, **self._tokens(batch)}
            session, names = self._session("features")
        return session.run(["features"], {k: feed[k] for k in names})[0]  # (B, H)

    def _entering_top(self, batch: dict, lora_R: np.ndarray) -> np.ndarray:
        """(B, T, H) hidden states entering the lowest trained block, zeros at padding: cached
        texts from the cache, the others through the lower graph (in micro-batches) and cached.
        Texts are cached unpadded (padding changes no real position)."""
        lower = np.ascontiguousarray(lora_R[self.split["lower_layers"]])  # (Ll, r, r)
        key = hashlib.sha1(lower.tobytes()).digest()
        if key != self.cache_key:  # other lower R: other hidden states
            self.cache.clear()
            self.cache_key = key
        tokens = self._tokens(batch)
        lengths = tokens["attention_mask"].sum(1)
        ids = batch.get("example_index")
        ids = [int(i) for i in ids] if ids is not None else None
        missing = [row for row in range(len(lengths)) if ids is None or ids[row] not in self.cache]
        computed = {}
        if missing:
            session, names = self._session("lower")
            longest = max(1, int(lengths[missing].max()))
            rows = max(1, MICRO_TOKENS // longest)
            for start in range(0, len(missing), rows):
                part = missing[start : start + rows]
                feed = {
                    "lora_R_lower": lower,
                    **{k: np.ascontiguousarray(v[part, :longest]) for k, v in tokens.items()},
                }
                hidden = session.run(["hidden"], {k: feed[k] for k in names})[0]  # (b, longest, H)
                for at, row in enumerate(part):
                    computed[row] = hidden[at, : int(lengths[row])].copy()  # (T_i, H)
            if ids is not None:
                self.cache.update({ids[row]: value for row, value in computed.items()})
        out = np.zeros((*tokens["input_ids"].shape, self.hidden_size), dtype=np.float32)  # (B, T, H)
        for row in range(len(lengths)):
            out[row, : int(lengths[row])] = computed[row] if row in computed else self.cache[ids[row]]
        return out

    def loss_and_grads(self, batch: dict, params: dict, logit_offset: np.ndarray | None = None):
        """The batch in micro-batches of at most MICRO_TOKENS padded tokens, their losses and
        gradients weighted by their share of the rows: the mean over the whole batch (the loss is
        a mean, so this is the same sum, regrouped)."""
        weight = np.ascontiguousarray(params["head_weight"], dtype=np.float32)  # (C, H)
        labels = np.ascontiguousarray(batch["labels"], dtype=np.int64)  # (B,)
        if logit_offset is None:
            logit_offset = np.zeros((len(labels), weight.shape[0]), dtype=np.float32)
        lora_R = self._check_r(params)
        fixed = {"head_weight": weight, "head_bias": np.ascontiguousarray(params["head_bias"], dtype=np.float32)}
        tokens = self._tokens(batch)
        if self.split:  # the top blocks alone, from the hidden states entering them
            fixed["lora_R_upper"] = lora_R[self.split["upper_layers"]]
            rowed = {"hidden": self._entering_top(batch, lora_R), "attention_mask": tokens["attention_mask"]}
            kind, grad_name = "upper_step", "grad_lora_R_upper"
        else:
            fixed["lora_R"] = lora_R
            rowed, kind, grad_name = tokens, "step", "grad_lora_R"
        rows = max(1, MICRO_TOKENS // max(1, tokens["input_ids"].shape[1]))
        session, names = self._session(kind)
        total, grads = 0.0, None
        for start in range(0, len(labels), rows):
            part = slice(start, start + rows)
            feed = {
                **fixed,
                "labels": labels[part],
                "logit_offset": np.ascontiguousarray(logit_offset[part], dtype=np.float32),
                **{k: np.ascontiguousarray(v[part]) for k, v in rowed.items()},
            }
            share = len(labels[part]) / len(labels)
            loss, grad_r, grad_w, grad_b = session.run(
                ["loss", grad_name, "grad_head_weight", "grad_head_bias"], {k: feed[k] for k in names}
            )
            total += share * float(loss)
            parts = (grad_r, grad_w, grad_b)
            grads = [share * g for g in parts] if grads is None else [a + share * g for a, g in zip(grads, parts)]
        grad_r, grad_w, grad_b = grads
        if self.split:
            upper, grad_r = grad_r, np.zeros_like(lora_R)  # (L, r, r): zeros for the lower R
            grad_r[self.split["upper_layers"]] = upper
        elif not self.trainable_layers.all():
            grad_r = grad_r * self.trainable_layers[:, None, None]
        return total, {"lora_R": grad_r, "head_weight": grad_w, "head_bias": grad_b}
