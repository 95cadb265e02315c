"""What a run leaves in its output folder besides the report (server/report.py): the factor
bundle and the global adapter, rewritten after every round with its round in the metadata."""

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from shared.artifacts.adapter_file import AdapterMeta, save_adapter
from shared.artifacts.basis_file import save_basis
from shared.loraxs.basis import Basis

BASIS_FILE = "basis.safetensors"
GLOBAL_ADAPTER = "global_adapter.safetensors"


def resolve_out_dir(out_dir: str) -> Path:
    return Path(out_dir) if out_dir else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def save_run_basis(out_dir: Path, basis: Basis, base_model: str) -> None:
    save_basis(out_dir / BASIS_FILE, basis, base_model)


def save_global_adapter(out_dir: Path, state: dict[str, torch.Tensor], meta: AdapterMeta, server_round: int) -> None:
    save_adapter(out_dir / GLOBAL_ADAPTER, state, replace(meta, extra={**meta.extra, "round": str(server_round)}))
