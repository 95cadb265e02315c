"""What a runtime must compute for the recipe: features and (loss, gradients). Nothing else.

The recipe core (shared/recipe/*.py except torch_backend.py) is numpy-only; it calls a backend
with plain numpy arrays and never imports torch. Contract (docs/recipe.md tells the story):

    Params = {"lora_R":      (L, r, r) float32   every adapted layer's R, in `layer_names` order
              "head_weight": (C, H) float32      the linear task head over pooled features
              "head_bias":   (C,) float32}
    Batch  = {"input_ids", "attention_mask", "token_type_ids": (B, T) int64   (padded per batch)
              "labels":        (B,) int64
              "example_index": (B,) int64   stable id of each text within one recipe run}

    features(batch, params)                 -> (B, H) float32: what the head sees (pooled)
    loss_and_grads(batch, params, offset)   -> (mean cross-entropy of
                                                features @ W.T + b + offset, {same keys: grads})

Logits for evaluation are computed by the core in numpy from features. `offset` (B, C) float32
(None = zeros) is added to the head's logits before the cross-entropy (a lexical logit part).
`trainable_layers` (L,) bool names the R a backend computes gradients for; the others stay as
given (their gradient is zero). A backend may cache work that depends only on frozen weights and
untrained R, keyed by `example_index` and those R's values (e.g. the hidden states entering the
lowest trained block); it must compute the same numbers as without the cache.
No dropout: both runtimes compute in evaluation mode, so the same params give the same numbers.
"""

from typing import Protocol

import numpy as np

Params = dict[str, np.ndarray]
Batch = dict[str, np.ndarray]
PARAM_KEYS = ("lora_R", "head_weight", "head_bias")
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "example_index")


class RecipeBackend(Protocol):
    layer_names: list[str]  # the L adapted layers, in the order of params["lora_R"]
    trainable_layers: np.ndarray  # (L,) bool: the R whose gradients this backend computes

    def features(self, batch: Batch, params: Params) -> np.ndarray:
        """(B, H) float32 pooled features of `batch` under `params` (its labels are ignored)."""

    def loss_and_grads(
        self, batch: Batch, params: Params, logit_offset: np.ndarray | None = None
    ) -> tuple[float, Params]:
        """Mean cross-entropy of the batch and its gradient for every key of `params` (zeros for
        R not in `trainable_layers`)."""
