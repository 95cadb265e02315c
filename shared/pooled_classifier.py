"""A text classifier that pools token states the way a sentence-embedding model was trained to.

`AutoModelForSequenceClassification` classifies BERT-like models from the [CLS] token through
BERT's pooler (dense + tanh). A sentence-transformers model (the packaged all-MiniLM-L6-v2) was
trained with *mean* pooling instead, and its pooler was never trained for anything: its
embeddings are the masked mean of the last hidden states. This wrapper keeps the backbone under
the same attribute name as the Hugging Face classifier (`bert.`, `roberta.`, ...), so LoRA-XS
target names, factor fingerprints and adapter keys are the same for both, and the head is
`classifier.weight` / `classifier.bias` as in BERT.
"""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls")


class PooledClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.base_model_prefix = backbone.base_model_prefix or "backbone"
        setattr(self, self.base_model_prefix, backbone)
        self.config = backbone.config
        self.pooling = pooling
        self.num_labels = num_labels
        dropout = getattr(self.config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(self.config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def sentence_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) tokens -> (B, H) pooled states, exactly as the embedding model computes them."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.pool(self.backbone(**inputs).last_hidden_state, attention_mask)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) last hidden states -> (B, H) sentence features."""
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, H)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        features = self.sentence_features(input_ids, attention_mask, token_type_ids)  # (B, H)
        logits = self.classifier(self.dropout(features))  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
