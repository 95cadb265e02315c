"""After every round: save the global adapter (with its round) and measure it on the server's
held-out set. Used as the `evaluate_fn` of the strategy."""

import time
from dataclasses import replace
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from shared.federation.protocol import unpack_adapter
from shared.adapter_file import AdapterMeta, save_adapter
from shared.loraxs.model import load_adapter_state
from shared.models import resolve_device
from shared.training import evaluate

GLOBAL_ADAPTER = "global_adapter.safetensors"


class GlobalEvaluation:
    """Callable (round, arrays) -> MetricRecord; keeps what it measured per round in `rounds`."""

    def __init__(self, model: nn.Module, out_dir: Path, meta: AdapterMeta, loader=None, progress_bar=None):
        self.model = model
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.path = out_dir / GLOBAL_ADAPTER
        self.meta = meta
        self.loader = loader
        self.bar = progress_bar
        self.rounds: dict[int, dict] = {}
        self._last = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # the untrained adapter: not worth a pass over the held-out set
            self._last = time.perf_counter()
            return None
        state = unpack_adapter(arrays, self.names)
        save_adapter(self.path, state, replace(self.meta, extra={**self.meta.extra, "round": str(server_round)}))
        record = {}
        if self.loader is not None:
            load_adapter_state(self.model, state)
            result = evaluate(self.model, self.loader, resolve_device("auto"))
            record = {"accuracy": result.accuracy, "loss": result.loss}
        now = time.perf_counter()
        self.rounds[server_round] = {**record, "seconds": now - self._last}
        self._last = now
        if self.bar is not None:
            self.bar.update(1)
            if record:
                self.bar.set_postfix(acc=f"{record['accuracy']:.3f}")
        return MetricRecord(record) if record else None
