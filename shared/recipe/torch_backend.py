"""The recipe's PyTorch backend: params in, features or (loss, gradients) out, as numpy.

With `train_blocks` = k on a `PooledClassifier` over a BERT-like encoder, only the R of the top k
blocks train; the hidden states entering them depend only on frozen weights and the lower R,
so they are computed once per text (keyed by `example_index` and the lower R's bytes) and an
epoch runs the top k blocks alone. Otherwise every R trains through the whole model.
"""

import hashlib

import numpy as np
import torch
from torch import nn

from shared.errors import LoraXSError
from shared.linear_probe import linear_head
from shared.loraxs.model import adapted_layers
from shared.pooled_classifier import PooledClassifier
from shared.recipe.backend import Batch, Params
from shared.recipe.memory import keep_large_buffers_off_the_heap, release_free_memory

TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids")
TRAIN_TOKENS = 1024  # padded tokens per micro-batch of a training step (activation memory)


def params_from_model(model: nn.Module) -> Params:
    """The model's R stack (L, r, r) and linear head as float32 numpy copies."""
    head = linear_head(model)
    if head is None:
        raise LoraXSError("the recipe needs a model with one linear head over pooled features")
    return {
        "lora_R": np.stack([m.lora_R.detach().cpu().float().numpy() for m in adapted_layers(model).values()]),
        "head_weight": head.weight.detach().cpu().float().numpy().copy(),
        "head_bias": head.bias.detach().cpu().float().numpy().copy(),
    }


@torch.no_grad()
def load_params(model: nn.Module, params: Params) -> None:
    for layer, value in zip(adapted_layers(model).values(), params["lora_R"]):
        layer.lora_R.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(layer.lora_R))
    head = linear_head(model)
    head.weight.copy_(torch.from_numpy(params["head_weight"]).to(head.weight))
    head.bias.copy_(torch.from_numpy(params["head_bias"]).to(head.bias))


def _blocks(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, str] | None:
    """(backbone, its blocks, the blocks' name prefix) of a PooledClassifier over a BERT-like
    encoder; None for other models."""
    if not isinstance(model, PooledClassifier):
        return None
    backbone = model.backbone
    blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(backbone, "_create_attention_masks"):
        return None
    return backbone, blocks, f"{model.base_model_prefix}.encoder.layer."


class TorchBackend:
    def __init__(
        self, model: nn.Module, train_blocks: int | None = None, device: str | torch.device = "cpu", bf16: bool = False
    ):
        self.model = model.to(device).eval()
        keep_large_buffers_off_the_heap()
        self.device = torch.device(device)
        # bfloat16 matmuls in the passes without gradients; training steps stay float32 (bfloat16
        # backward held accuracy too, but kept ~300 MB more memory on long texts)
        self.autocast = bf16 and bf16_supported(self.device)
        self.layers = adapted_layers(model)
        self.layer_names = list(self.layers)
        self.head = linear_head(model)
        if self.head is None:
            raise LoraXSError("the recipe needs a model with one linear head over pooled features")
        found = _blocks(model)
        self.first_trained = 0  # the lowest block whose R trains (0: all, no cache)
        if found is not None and train_blocks is not None and train_blocks < len(found[1]):
            self.backbone, self.blocks, prefix = found
            self.first_trained = len(self.blocks) - train_blocks
            self.trainable_layers = np.array(
                [_block_of(name, prefix) >= self.first_trained for name in self.layer_names]
            )
        else:
            self.trainable_layers = np.ones(len(self.layer_names), dtype=bool)
        self.cache: dict[tuple[str, int], torch.Tensor] = {}

    # -- what the protocol asks -------------------------------------------------------------
    def features(self, batch: Batch, params: Params) -> np.ndarray:
        load_params(self.model, params)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self._features(batch).float().cpu().numpy()
        if batch["input_ids"].size >= TRAIN_TOKENS:
            release_free_memory()
        return out

    def loss_and_grads(
        self, batch: Batch, params: Params, logit_offset: np.ndarray | None = None
    ) -> tuple[float, Params]:
        load_params(self.model, params)
        trained = [layer.lora_R for layer, on in zip(self.layers.values(), self.trainable_layers) if on]
        for tensor in [*trained, self.head.weight, self.head.bias]:
            tensor.grad = None
        total, rows = 0.0, len(batch["labels"])
        for part in _row_chunks(batch):  # long texts: micro-batches, the same mean loss and gradients
            chunk = {k: v[part] for k, v in batch.items()}
            with torch.enable_grad():
                logits = self.head(self._features(chunk))  # (b, C)
                if logit_offset is not None:
                    logits = logits + torch.from_numpy(logit_offset[part]).to(logits)
                loss = nn.functional.cross_entropy(logits.float(), torch.from_numpy(chunk["labels"]).to(self.device))
                (loss * (len(chunk["labels"]) / rows)).backward()
            total += float(loss.detach()) * len(chunk["labels"]) / rows
        r_grads = np.zeros_like(params["lora_R"])
        for index, (layer, on) in enumerate(zip(self.layers.values(), self.trainable_layers)):
            if on and layer.lora_R.grad is not None:
                r_grads[index] = layer.lora_R.grad.cpu().numpy()
        if batch["input_ids"].size >= TRAIN_TOKENS:
            release_free_memory()
        return total, {
            "lora_R": r_grads,
            "head_weight": self.head.weight.grad.cpu().numpy().copy(),
            "head_bias": self.head.bias.grad.cpu().numpy().copy(),
        }

    # -- how --------------------------------------------------------------------------------
    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(batch[k]).to(self.device) for k in TENSOR_KEYS if k in batch}

    def _features(self, batch: Batch) -> torch.Tensor:
        inputs = self._tensors(batch)
        if not self.first_trained:
            if isinstance(self.model, PooledClassifier):
                return self.model.sentence_features(**inputs)  # (B, H)
            return _captured_features(self.model, self.head, inputs)
        hidden = self._entering_top(batch, inputs)  # (B, T, H)
        mask = self._mask(inputs["attention_mask"], hidden)
        for block in self.blocks[self.first_trained :]:
            hidden = _hidden(block(hidden, mask))
        return self.model.pool(hidden, inputs["attention_mask"])  # (B, H)

    def _mask(self, attention_mask: torch.Tensor, hidden: torch.Tensor):
        return self.backbone._create_attention_masks(
            attention_mask=attention_mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            cache=None,
        )[0]

    def _lower_key(self) -> str:
        lower = [
            layer.lora_R.detach().cpu().numpy().tobytes()
            for layer, on in zip(self.layers.values(), self.trainable_layers)
            if not on
        ]
        return hashlib.sha1(b"".join(lower)).hexdigest()

    def _entering_top(self, batch: Batch, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H) hidden states entering the lowest trained block, from the cache when every
        text of the batch is in it (texts are cached unpadded: padding changes no real position)."""
        key, lengths = self._lower_key(), batch["attention_mask"].sum(1)
        ids = [int(i) for i in batch["example_index"]]
        if not all((key, i) in self.cache for i in ids):
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                hidden = self.backbone.embeddings(
                    input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids")
                )
                mask = self._mask(inputs["attention_mask"], hidden)
                for block in self.blocks[: self.first_trained]:
                    hidden = _hidden(block(hidden, mask))
            for row, i in enumerate(ids):
                self.cache[key, i] = hidden[row, : int(lengths[row])].float().clone()
        out = torch.zeros(
            len(ids), batch["input_ids"].shape[1], self.cache[key, ids[0]].shape[-1], device=self.device
        )  # (B, T, H)
        for row, i in enumerate(ids):
            out[row, : int(lengths[row])] = self.cache[key, i]
        return out

    def forget(self) -> None:
        """Drop the cached hidden states."""
        self.cache.clear()


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 matmuls in hardware: a CUDA device that has them, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _row_chunks(batch: Batch) -> list[slice]:
    """Row ranges of at most `TRAIN_TOKENS` padded tokens each (at least one row)."""
    rows, length = batch["input_ids"].shape
    step = max(1, TRAIN_TOKENS // max(length, 1))
    return [slice(k, min(k + step, rows)) for k in range(0, rows, step)]


def _block_of(name: str, prefix: str) -> int:
    if not name.startswith(prefix):
        return -1  # outside the blocks: never trained with a cache
    return int(name[len(prefix) :].split(".", 1)[0])


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _captured_features(model: nn.Module, head: nn.Linear, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What `head` receives in a forward pass of a model other than a PooledClassifier."""
    captured = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(**inputs)
    finally:
        hook.remove()
    return captured[0]
