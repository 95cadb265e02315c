"""The strategy's `evaluate_fn`, after every round: save the global adapter (server/run_folder.py)
and measure it on the server's held-out set (shared `evaluate`); time the round."""

import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from shared.base_models import resolve_device
from shared.federation.protocol import unpack_adapter
from shared.loraxs.model import load_adapter_state
from shared.training import evaluate


class AfterRound:
    """Callable (round, arrays) -> MetricRecord; keeps what it measured per round in `rounds`."""

    def __init__(
        self, model: nn.Module, save: Callable[[dict[str, torch.Tensor], int], None], loader=None, progress_bar=None
    ):
        self.model = model
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.save = save
        self.loader = loader
        self.bar = progress_bar
        self.rounds: dict[int, dict] = {}
        self._last = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # the untrained adapter: not worth a pass over the held-out set
            self._last = time.perf_counter()
            return None
        state = unpack_adapter(arrays, self.names)
        self.save(state, server_round)
        record = self.measure(state)
        now = time.perf_counter()
        self.rounds[server_round] = {**record, "seconds": now - self._last}
        self._last = now
        if self.bar is not None:
            self.bar.update(1)
            if record:
                self.bar.set_postfix(acc=f"{record['accuracy']:.3f}")
        return MetricRecord(record) if record else None

    def measure(self, state: dict[str, torch.Tensor]) -> dict:
        """Accuracy and loss of `state` on the held-out set ({} without one)."""
        if self.loader is None:
            return {}
        load_adapter_state(self.model, state)
        result = evaluate(self.model, self.loader, resolve_device("auto"))
        return {"accuracy": result.accuracy, "loss": result.loss}
