"""The training step cut below the top blocks: a lower graph run once per text, upper graphs
run every step (the onnx twin of shared/recipe/torch_backend.py's `train_blocks` cache).

    lower           (lora_R_lower (Ll, r, r), tokens (B, T)...) -> hidden (B, T, H)
                    embeddings and the blocks below the first trained one
    upper_step      (lora_R_upper (Lu, r, r), head_weight (C, H), head_bias (C,), hidden (B, T, H),
                     attention_mask (B, T), labels (B,), logit_offset (B, C))
                    -> loss (), grad_lora_R_upper (Lu, r, r), grad_head_weight, grad_head_bias, logits (B, C)
    upper_features  (lora_R_upper, hidden, attention_mask) -> features (B, H)

`hidden` is what enters the first trained block; rows of the R stack go to the lower or the
upper graph by their block (`SplitLayout`). Only a PooledClassifier over a BERT-like encoder
whose every adapted layer sits inside a block splits; anything else keeps the full graphs alone.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from shared.loraxs.model import adapted_layers
from shared.recipe.torch_backend import _block_of, _blocks, _hidden

LOWER_INPUT, UPPER_INPUT = "lora_R_lower", "lora_R_upper"
HIDDEN = "hidden"
UPPER_STEP_OUTPUTS = ("loss", "grad_lora_R_upper", "grad_head_weight", "grad_head_bias", "logits")
UPPER_FEATURE_OUTPUT = "features"


@dataclass(frozen=True)
class SplitLayout:
    train_blocks: int  # the top blocks whose R train
    blocks: int  # the encoder's blocks
    lower_layers: list[int]  # rows of the R stack inside the blocks below (the lower graph's R)
    upper_layers: list[int]  # rows inside the top `train_blocks` blocks (the upper graphs' R)

    def describe(self) -> dict:
        return {
            "train_blocks": self.train_blocks,
            "blocks": self.blocks,
            "lower_layers": self.lower_layers,
            "upper_layers": self.upper_layers,
        }


def split_layout(model: nn.Module, train_blocks: int | None) -> SplitLayout | None:
    """Where `model` splits for `train_blocks` top blocks; None where it does not (not a BERT-like
    PooledClassifier, an adapted layer outside the blocks, or every block trained)."""
    found = _blocks(model)
    if found is None or train_blocks is None or not 0 < train_blocks < len(found[1]):
        return None
    _, blocks, prefix = found
    first = len(blocks) - train_blocks
    index = [_block_of(name, prefix) for name in adapted_layers(model)]
    if min(index) < 0:
        return None
    return SplitLayout(
        train_blocks,
        len(blocks),
        [k for k, b in enumerate(index) if b < first],
        [k for k, b in enumerate(index) if b >= first],
    )


class _Calls(nn.Module):
    """`functional_call` on any function of the model: R swapped in for the call alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, function, *args):
        return function(*args)


class SplitFunctions:
    """The lower and upper passes in plain PyTorch (eager), the reference the graphs are checked
    against; R stacked as the graphs take it."""

    def __init__(self, model: nn.Module, layout: SplitLayout, token_names: list[str]):
        self.model, self.layout, self.token_names = model, layout, list(token_names)
        self.backbone, self.blocks, _ = _blocks(model)
        self.first = layout.blocks - layout.train_blocks
        names = [f"model.{name}.lora_R" for name in adapted_layers(model)]
        self.lower_names = [names[k] for k in layout.lower_layers]
        self.upper_names = [names[k] for k in layout.upper_layers]
        self.calls = _Calls(model)

    def _call(self, names: list[str], stacked: torch.Tensor, function, *args):
        params = {name: stacked[i] for i, name in enumerate(names)}  # each (r, r)
        return functional_call(self.calls, params, args=(function, *args), strict=False)

    def _mask(self, attention_mask: torch.Tensor, hidden: torch.Tensor):
        return self.backbone._create_attention_masks(
            attention_mask=attention_mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            cache=None,
        )[0]

    def _lower(self, *tokens: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.token_names, tokens))
        hidden = self.backbone.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
        mask = self._mask(inputs["attention_mask"], hidden)
        for block in self.blocks[: self.first]:
            hidden = _hidden(block(hidden, mask))
        return hidden  # (B, T, H)

    def _upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = self._mask(attention_mask, hidden)
        for block in self.blocks[self.first :]:
            hidden = _hidden(block(hidden, mask))
        return self.model.pool(hidden, attention_mask)  # (B, H)

    def lower(self, lora_R_lower: torch.Tensor, *tokens: torch.Tensor) -> torch.Tensor:
        return self._call(self.lower_names, lora_R_lower, self._lower, *tokens)

    def upper_features(self, lora_R_upper, hidden, attention_mask) -> torch.Tensor:
        return self._call(self.upper_names, lora_R_upper, self._upper, hidden, attention_mask)

    def upper_step(self, lora_R_upper, head_weight, head_bias, hidden, attention_mask, labels, offset):
        trainable = [t.requires_grad_(True) for t in (lora_R_upper, head_weight, head_bias)]
        features = self.upper_features(lora_R_upper, hidden, attention_mask)  # (B, H)
        logits = features @ head_weight.T + head_bias + offset  # (B, H) @ (H, C) -> (B, C)
        loss = nn.functional.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, trainable)
        return (loss, *grads, logits.detach())


def lower_input_names(token_names: list[str]) -> list[str]:
    return [LOWER_INPUT, *token_names]


def upper_step_input_names() -> list[str]:
    return [UPPER_INPUT, "head_weight", "head_bias", HIDDEN, "attention_mask", "labels", "logit_offset"]


def upper_feature_input_names() -> list[str]:
    return [UPPER_INPUT, HIDDEN, "attention_mask"]


def split_dynamic_axes(token_names: list[str]) -> dict[str, tuple[int, ...]]:
    axes = {name: (0, 1) for name in token_names}
    return axes | {
        HIDDEN: (0, 1),
        "attention_mask": (0, 1),
        "labels": (0,),
        "logit_offset": (0, 1),
        "head_weight": (0,),
        "head_bias": (0,),
    }


def split_examples(functions: SplitFunctions, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full graphs' example inputs (step_graph.example_inputs) plus the split graphs' own:
    R cut into its lower and upper rows, the hidden states eager PyTorch computes."""
    layout = functions.layout
    lower_r, upper_r = example["lora_R"][layout.lower_layers], example["lora_R"][layout.upper_layers]
    with torch.no_grad():
        hidden = functions.lower(lower_r.clone(), *(example[n] for n in functions.token_names))
    return example | {LOWER_INPUT: lower_r, UPPER_INPUT: upper_r, HIDDEN: hidden.detach().clone()}
