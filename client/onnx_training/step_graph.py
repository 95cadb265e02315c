"""The LoRA-XS training step and the feature pass of an adapted model, as plain ONNX graphs.

    step      (lora_R (L, r, r), head_weight (C, H), head_bias (C,), tokens (B, T)...,
               labels (B,), logit_offset (B, C))
              -> loss (), grad_lora_R (L, r, r), grad_head_weight (C, H), grad_head_bias (C,), logits (B, C)
    features  (lora_R (L, r, r), tokens (B, T)...) -> features (B, H): what the linear head sees
    causal    (lora_R, input_ids, attention_mask, labels (B, T)) -> loss (), grad_lora_R  (causal LM)

logits = features @ head_weight.T + head_bias + logit_offset; loss = their mean cross-entropy.
R is stacked in adapted-layer (model) order; the frozen base weights and SVD factors are
constants of the graphs. Batch, sequence and label axes are dynamic.

How: `make_fx(step, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic")`
turns `torch.autograd.grad` into plain aten ops with symbolic shapes (duck shaping off, so a
batch that happens to equal the rank stays its own axis), and `torch.onnx.export(dynamo=True)`
writes that graph. Attention is traced eager (MatMul / Softmax), and transformers'
data-dependent `padding_mask.all()` shortcut is off while tracing (`traceable_masks`). The model
is traced in eval mode: the graphs hold no dropout, so a step is a deterministic function.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from client.onnx.graph import _quiet, attention_implementation
from shared.errors import LoraXSError
from shared.linear_probe import linear_head
from shared.loraxs.model import adapted_layers

STEP_OUTPUTS = ("loss", "grad_lora_R", "grad_head_weight", "grad_head_bias", "logits")
CAUSAL_OUTPUTS = ("loss", "grad_lora_R")
FEATURE_OUTPUT = "features"
ADAPTER_INPUTS = ("lora_R",)
HEAD_INPUTS = ("head_weight", "head_bias")
# Trace sizes: distinct from each other and from the usual model sizes; every one is dynamic.
TRACE_BATCH, TRACE_LENGTH, TRACE_LABELS = 5, 11, 3


@contextlib.contextmanager
def traceable_masks():
    """transformers skips the attention mask when `padding_mask.all()`: a data-dependent branch
    that a trace would bake in. While inside, the mask is always applied; as before after."""
    import transformers.masking_utils as masking_utils

    names = [n for n in ("_ignore_bidirectional_mask_sdpa", "_ignore_causal_mask_sdpa") if hasattr(masking_utils, n)]
    saved = {name: getattr(masking_utils, name) for name in names}
    for name in names:
        setattr(masking_utils, name, lambda *args, **kwargs: False)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(masking_utils, name, value)


@contextlib.contextmanager
def head_removed(model: nn.Module):
    """While inside, `model` returns what its linear head sees as its logits (B, H)."""
    head = model.classifier
    model.classifier = nn.Identity()
    try:
        yield head
    finally:
        model.classifier = head


@dataclass
class StepFunctions:
    """The adapted model's step and feature functions over stacked R; plain PyTorch (eager),
    the reference the exported graphs are checked against."""

    model: nn.Module  # LoRA-XS injected, eval mode, every parameter frozen
    r_names: list[str]  # "<module>.lora_R" in model order: the rows of the stacked R
    token_names: list[str]

    def _run(self, lora_R: torch.Tensor, tokens: tuple[torch.Tensor, ...], **kwargs):
        params = {name: lora_R[i] for i, name in enumerate(self.r_names)}  # each (r, r)
        inputs = dict(zip(self.token_names, tokens)) | kwargs
        return functional_call(self.model, params, args=(), kwargs=inputs, strict=False)

    def features(self, lora_R: torch.Tensor, *tokens: torch.Tensor) -> torch.Tensor:
        return self._run(lora_R, tokens).logits  # (B, H): the head is an Identity here

    def step(self, lora_R, head_weight, head_bias, *rest):
        """rest: the token tensors, labels (B,), logit_offset (B, C)."""
        tokens, labels, offset = rest[:-2], rest[-2], rest[-1]
        trainable = [t.requires_grad_(True) for t in (lora_R, head_weight, head_bias)]
        features = self._run(lora_R, tokens).logits  # (B, H)
        logits = features @ head_weight.T + head_bias + offset  # (B, H) @ (H, C) -> (B, C)
        loss = nn.functional.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, trainable)
        return (loss, *grads, logits.detach())

    def causal_step(self, lora_R, input_ids, attention_mask, labels):
        """labels (B, T): the tokens, IGNORE_INDEX at padding; Hugging Face's shifted loss."""
        lora_R = lora_R.requires_grad_(True)
        loss = self._run(lora_R, (input_ids, attention_mask), labels=labels, use_cache=False).loss
        return loss, torch.autograd.grad(loss, [lora_R])[0]


def step_functions(model: nn.Module, token_names: list[str]) -> StepFunctions:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return StepFunctions(model, [f"{name}.lora_R" for name in adapted_layers(model)], list(token_names))


def stacked_r(model: nn.Module) -> torch.Tensor:
    """(L, r, r): every lora_R of `model` in model order."""
    return torch.stack([layer.lora_R.detach().float() for layer in adapted_layers(model).values()])


def check_exportable(model: nn.Module, task: str) -> None:
    """One line naming what exports, for anything else."""
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if task == "seq-cls" and linear_head(model) is None:
        raise LoraXSError(
            f"a {kind} classifier without one linear head over pooled features does not export "
            "for on-device training; BERT-like encoders (mean, cls or pooler pooling) do"
        )


class _Traced(nn.Module):
    def __init__(self, graph):
        super().__init__()
        self.traced = graph

    def forward(self, *inputs):
        return self.traced(*inputs)


def trace(function, example: tuple[torch.Tensor, ...]):
    """function -> an fx graph of plain aten ops (autograd included), shapes symbolic."""
    import torch.fx.experimental._config as fx_config
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    with _quiet(), traceable_masks(), fx_config.patch(use_duck_shape=False):
        return make_fx(
            lambda *inputs: function(*inputs),
            decomposition_table=core_aten_decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*(t.clone() for t in example))


def export_function(
    function,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, tuple[int, ...]],
    path: Path,
    opset: int | None,
    model: nn.Module,
) -> int:
    """Traces `function` (eager attention) and writes it to `path` with its weights in
    `path.name + '.data'`; `dynamic_axes`: input name -> its dynamic axes. -> the opset written."""
    with attention_implementation(model, "eager"):
        graph = trace(function, example)
    dynamic = torch.export.Dim.DYNAMIC
    shapes = tuple({axis: dynamic for axis in dynamic_axes.get(name, ())} or None for name in input_names)
    with _quiet():
        program = torch.onnx.export(
            _Traced(graph),
            example,
            dynamic_shapes=(shapes,),
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        written = program.model.opset_imports[""]
        program.save(path, external_data=True)
    return written


def example_inputs(
    model: nn.Module,
    token_names: list[str],
    num_labels: int = TRACE_LABELS,
    batch: int = TRACE_BATCH,
    length: int = TRACE_LENGTH,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Seeded inputs of every graph: ids, a padded last row, R and head of plausible scale."""
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length // 2 :] = 0  # one padded row
    lora_R = stacked_r(model)
    hidden = int(model.config.hidden_size)
    inputs = {
        "lora_R": lora_R + 0.05 * torch.randn(lora_R.shape, generator=generator),
        "head_weight": 0.1 * torch.randn(num_labels, hidden, generator=generator),
        "head_bias": 0.1 * torch.randn(num_labels, generator=generator),
        "input_ids": torch.randint(min(100, vocab - 1), vocab, (batch, length), generator=generator),
        "attention_mask": mask,
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch,), generator=generator),
        "logit_offset": 0.1 * torch.randn(batch, num_labels, generator=generator),
    }
    if "token_type_ids" not in token_names:
        del inputs["token_type_ids"]
    return inputs


def step_input_names(token_names: list[str]) -> list[str]:
    return [*ADAPTER_INPUTS, *HEAD_INPUTS, *token_names, "labels", "logit_offset"]


def causal_input_names() -> list[str]:
    return [*ADAPTER_INPUTS, "input_ids", "attention_mask", "labels"]


def dynamic_axes(token_names: list[str], causal: bool = False) -> dict[str, tuple[int, ...]]:
    """Batch and sequence of every token tensor; batch of labels (B,) or (B, T); labels of the head."""
    axes = {name: (0, 1) for name in token_names}
    if causal:
        return axes | {"labels": (0, 1)}
    return axes | {"labels": (0,), "logit_offset": (0, 1), "head_weight": (0,), "head_bias": (0,)}
