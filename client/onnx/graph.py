"""Export an adapted model to ONNX with dynamic batch and sequence axes, and quantize it.

Two graphs come from one wrapper: the merged model (delta W baked into W), or the unmerged
adapted model with every adapter tensor (each r x r `lora_R`, the head) as a graph input, so one
base file serves every user. Exports go through `torch.export` (the default ONNX exporter), with
the model's attention traced as plain MatMul / Softmax / MatMul (EXPORT_ATTENTION).
"""

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from shared.errors import LoraXSError

OUTPUT_NAME = "logits"
TOKEN_AXES = ("batch", "sequence")
EXAMPLE_SHAPE = (2, 16)  # trace shape; verification runs other shapes to prove the axes dynamic
SINGLE_FILE_LIMIT = 2**31 - 2**26  # protobuf caps one file at 2 GiB; larger weights go to a .data file
# Hugging Face's "sdpa" attention exports as a decomposition with a Where and an IsNaN per layer
# (for fully masked rows) that onnxruntime runs as separate kernels; "eager" is the same math as
# MatMul / Add(mask) / Softmax / MatMul. MiniLM, batch 32 x 64 on 2 cores: int8 128 -> 111 ms,
# fp32 278 -> 261 ms (benchmarks/studies/results/int8_recipes.md).
EXPORT_ATTENTION = "eager"


def token_input_names(model: nn.Module, tokenizer) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when both the tokenizer and model use it."""
    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in accepted and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


class LogitsGraph(nn.Module):
    """What gets exported: token tensors, then optionally adapter tensors, in; logits out.

    With `adapter_names`, those parameters of `model` (every `*.lora_R`, the head) are replaced
    per call by the inputs that follow the token inputs; everything else stays a constant.
    """

    def __init__(self, model: nn.Module, task: str, token_names: list[str], adapter_names: list[str] = ()):
        super().__init__()
        self.model = model
        self.causal = task == "causal-lm"  # logits only: no key/value cache in or out
        self.token_names = list(token_names)
        self.adapter_names = list(adapter_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        tokens = dict(zip(self.token_names, inputs))  # each (B, T) int64
        kwargs = {**tokens, "use_cache": False} if self.causal else tokens
        adapter = dict(zip(self.adapter_names, inputs[len(self.token_names) :]))
        if adapter:
            out = functional_call(self.model, adapter, args=(), kwargs=kwargs)
        else:
            out = self.model(**kwargs)
        return out.logits  # (B, num_labels) for seq-cls, (B, T, vocab) for causal-lm


def example_tokens(token_names: list[str]) -> tuple[torch.Tensor, ...]:
    """Trace inputs of EXAMPLE_SHAPE: id 1 everywhere, full attention, segment 0."""
    values = {"input_ids": 1, "attention_mask": 1, "token_type_ids": 0}
    return tuple(torch.full(EXAMPLE_SHAPE, values[name], dtype=torch.long) for name in token_names)


def needs_external_data(model: nn.Module) -> bool:
    num_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return num_bytes > SINGLE_FILE_LIMIT


@contextlib.contextmanager
def _quiet():
    """The exporter and quantizer narrate on stdout, warnings and loggers; the CLI has its own output."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str):
    """Every Hugging Face model inside `model` runs `name` attention while inside, as before after."""
    from transformers import PreTrainedModel

    models = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    previous = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation(name)
    try:
        yield
    finally:
        for m, name_before in zip(models, previous):
            m.set_attn_implementation(name_before)


def export_graph(
    graph: LogitsGraph,
    adapter_example: dict[str, torch.Tensor],
    path: Path,
    opset: int | None,
    external_data: bool,
    attention: str = EXPORT_ATTENTION,
) -> int:
    """Writes `graph` to `path` (batch and sequence axes dynamic), its attention traced as
    `attention` (a Hugging Face attn_implementation); returns the opset written."""
    dynamic = torch.export.Dim.DYNAMIC
    token_shapes = tuple({0: dynamic, 1: dynamic} for _ in graph.token_names)
    adapter_shapes = tuple(None for _ in graph.adapter_names)  # fixed (r, r) and head shapes
    inputs = example_tokens(graph.token_names) + tuple(adapter_example[n] for n in graph.adapter_names)
    with _quiet(), torch.no_grad(), attention_implementation(graph.model, attention):
        # torch.export first: torch.onnx.export(dynamic_shapes=...) turns the varargs tuple into a
        # list and rejects it; Dim.DYNAMIC (not a named Dim) lets it infer the sequence's range.
        program = torch.export.export(
            graph, inputs, dynamic_shapes={"inputs": token_shapes + adapter_shapes}, strict=False
        )
        onnx_program = torch.onnx.export(
            program,
            (),
            input_names=graph.token_names + graph.adapter_names,
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        graph_inputs = onnx_program.model.graph.inputs
        onnx_program.rename_axes(
            {
                dim: axis
                for value in graph_inputs[: len(graph.token_names)]
                for dim, axis in zip(value.shape, TOKEN_AXES)
            }
        )
        written = onnx_program.model.opset_imports[""]
        if opset is not None and written != opset:
            raise LoraXSError(
                f"the exporter could not convert this model to opset {opset} (it reached {written}); "
                f"pass --opset {written} or later"
            )
        onnx_program.save(path, external_data=external_data)
    return written


INT8_RECIPE = (
    "onnxruntime dynamic quantization of the MatMul weights only, int8 per output channel, "
    f"of the graph exported with {EXPORT_ATTENTION!r} attention; "
    "embeddings, attention (activation x activation) and the head stay fp32"
)


def head_nodes(model) -> list[str]:
    """The node writing the logits and, when that is an Add (bias), the MatMul feeding it; and every
    MatMul / Gemm whose constant weight maps onto the C logits (the classifier, also when a
    personal output (lexical part, temperature) follows it and writes the logits itself)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    head = producer.get(OUTPUT_NAME)
    if head is None:
        return []
    names = [head.name]
    if head.op_type == "Add":
        names += [producer[i].name for i in head.input if i in producer and producer[i].op_type in ("MatMul", "Gemm")]
    classes = _logit_classes(model)
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if classes and node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights:
            dims = weights[node.input[1]]
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            if len(dims) == 2 and dims[0 if node.op_type == "Gemm" and trans_b else 1] == classes:
                names.append(node.name)
    # quantize_dynamic first splits a Gemm into `<name>_MatMul` + `<name>_Add`, then applies the exclusions
    names = list(dict.fromkeys(names))
    return names + [f"{name}_MatMul" for name in names]


def _logit_classes(model) -> int | None:
    """C of the (B, C) logits output, when the graph states it."""
    for output in model.graph.output:
        if output.name == OUTPUT_NAME:
            dims = output.type.tensor_type.shape.dim
            return dims[-1].dim_value or None if dims else None
    return None


def quantize_int8(source: Path, target: Path, external_data: bool) -> None:
    """onnxruntime dynamic quantization, INT8_RECIPE: int8 weights, activations quantized at run time.

    What costs a trained adapter's accuracy (docs/export.md, benchmarks/studies/results/int8_recipes.md):
    per-tensor weight scales (a few large columns set the step for all) and the int8
    word-embedding table. Per-channel MatMul weights with fp32 embeddings keep nearly every
    prediction. The head (a few thousand weights, the logits themselves) is kept fp32 at no cost;
    the attention MatMuls (no constant weight) are never quantized (MatMulConstBOnly).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = head_nodes(onnx.load(str(source), load_external_data=False))
    with _quiet():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            nodes_to_exclude=head,
            use_external_data_format=external_data,
        )


def file_size(path: Path) -> int:
    """Bytes of an ONNX model, with its external-data file when it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
