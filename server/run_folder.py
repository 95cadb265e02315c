"""What a run leaves in its output folder besides the report (server/report.py): the factor
bundle and the global adapter, rewritten after every round with its round in the metadata."""

import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from shared.artifacts.adapter_file import AdapterMeta, save_adapter
from shared.artifacts.basis_file import save_basis
from shared.artifacts.blob import check_writable_folder
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis

BASIS_FILE = "basis.safetensors"
GLOBAL_ADAPTER = "global_adapter.safetensors"
CHECKPOINT = "checkpoint.safetensors"  # server/checkpoint.py writes it
RUN_FILES = ("report.json", CHECKPOINT, GLOBAL_ADAPTER, BASIS_FILE)  # what marks a folder as a run


def resolve_out_dir(out_dir: str) -> Path:
    return Path(out_dir) if out_dir else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def save_run_basis(out_dir: Path, basis: Basis, base_model: str) -> None:
    save_basis(out_dir / BASIS_FILE, basis, base_model)


def save_global_adapter(out_dir: Path, state: dict[str, torch.Tensor], meta: AdapterMeta, server_round: int) -> None:
    save_adapter(out_dir / GLOBAL_ADAPTER, state, replace(meta, extra={**meta.extra, "round": str(server_round)}))


def check_run_folder(out_dir: Path, force: bool = False, resume: bool = False) -> None:
    """Before any work: `out_dir` is a folder (or can be made) that takes files, and holds no
    earlier run unless `resume` continues it or `force` replaces it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LoraXSError(f"--out {out_dir} is a file; give a folder for the run")
    if not resume and not force and out_dir.is_dir():
        found = [name for name in RUN_FILES if (out_dir / name).exists()]
        if found:
            raise LoraXSError(
                f"--out {out_dir} already holds a run ({', '.join(found)}); pass --force to "
                f"replace it, or --resume {out_dir} to continue it"
            )
    check_writable_folder(out_dir)


def remove_unfinished_run(out_dir: Path, created: bool) -> str:
    """After a run stopped early: a folder this run created that holds no checkpoint yet is
    removed (nothing in it can be used); -> one line saying what became of it."""
    if not out_dir.is_dir():
        return ""
    if (out_dir / CHECKPOINT).exists():
        return f"the run folder {out_dir} holds a checkpoint: continue with --resume {out_dir}"
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
        return f"the unfinished run folder {out_dir} was removed"
    return ""
