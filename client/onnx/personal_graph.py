"""Export graphs of a personal classifier with its lexical part and temperature (shared/personal_output.py).

The merged graph holds the parts' tables as constants; the adapter-as-input / shared base graph
takes them as seven more adapter inputs (`GRAPH_INPUTS`: (V,) idf, (V, C) weights, (C,) bias, (1,) log
temperature, and the pairs' (S,) check marks, (S,) idf, (S, C) weights), which the base graph's zero
defaults turn into "no lexical part, T = 1".
"""

import torch
from torch import nn
from torch.func import functional_call

from client.onnx.graph import LogitsGraph
from shared.personal_output import GRAPH_INPUTS, OutputParts, PersonalOutput, dense_tables


class PersonalLogitsGraph(LogitsGraph):
    """`LogitsGraph` of a seq-cls model followed by `output`; adapter inputs named in
    GRAPH_INPUTS feed the output's tables, the others the model (as in `LogitsGraph`)."""

    def __init__(self, model: nn.Module, output: PersonalOutput, token_names: list[str], adapter_names=()):
        super().__init__(model, "seq-cls", token_names, adapter_names)
        self.output = output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        tokens = dict(zip(self.token_names, inputs))  # each (B, T) int64
        given = dict(zip(self.adapter_names, inputs[len(self.token_names) :]))
        tables = {name: given.pop(name) for name in GRAPH_INPUTS if name in given}
        out = functional_call(self.model, given, args=(), kwargs=tokens) if given else self.model(**tokens)
        return self.output(tokens["input_ids"], tokens["attention_mask"], out.logits, tables or None)  # (B, C)


def logits_graph(
    model: nn.Module, task: str, token_names: list[str], parts: OutputParts, adapter_names=()
) -> LogitsGraph:
    """The plain `LogitsGraph`, or with the personal parts when the adapter has any."""
    if parts.empty:
        return LogitsGraph(model, task, token_names, [n for n in adapter_names if n not in GRAPH_INPUTS])
    output = PersonalOutput(parts, model.config.vocab_size, model.classifier.out_features)
    return PersonalLogitsGraph(model, output, token_names, adapter_names)


def graph_state(state: dict[str, torch.Tensor], parts: OutputParts, model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter-as-input graph's inputs: the model's adapter state, then the parts' tables."""
    if parts.empty:
        return dict(state)
    return dict(state) | dense_tables(parts, model.config.vocab_size, model.classifier.out_features)


def split_graph_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inverse of `graph_state`: (model adapter state, parts' tables)."""
    return (
        {k: v for k, v in state.items() if k not in GRAPH_INPUTS},
        {k: v for k, v in state.items() if k in GRAPH_INPUTS},
    )


def with_tables(graph: LogitsGraph, tables: dict[str, torch.Tensor]) -> LogitsGraph:
    """`graph` with its output's constant tables replaced (another user's parts)."""
    if isinstance(graph, PersonalLogitsGraph) and tables:
        for name, value in tables.items():
            getattr(graph.output, name.replace(".", "_")).copy_(value)
    return graph
