"""What a node remembers between messages: the factors (by fingerprint) and its personal adapter.

Simulation keeps both in `context.state` (Flower carries it from message to message).
Deployment (`data-dir` in the node config) keeps them on disk, since every message runs in a
fresh process: factors in <data-dir>/.loraxs/basis/<fingerprint>.safetensors (shared/artifacts/cache)
and the personal adapter in <data-dir>/.loraxs/federation_personal_adapter.safetensors (adapter
file format, its round in the metadata; not to be confused with `client.run`'s output,
<data-dir>/personal_adapter.safetensors). The ClientApp code path is the same for both.
"""

from pathlib import Path
from typing import Protocol

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from shared.artifacts.adapter_file import AdapterMeta, load_adapter, save_adapter
from shared.artifacts.cache import STATE_FOLDER, find_cached_basis, state_basis_dir, store_basis
from shared.errors import LoraXSError
from shared.federation.protocol import pack_basis, tensors_from_record, unpack_basis
from shared.loraxs.basis import Basis

FEDERATION_PERSONAL_ADAPTER = "federation_personal_adapter.safetensors"  # in <data-dir>/.loraxs/
BASIS_RECORD, BASIS_INFO = "loraxs.basis", "loraxs.basis-info"
PERSONAL_RECORD, PERSONAL_INFO = "loraxs.personal", "loraxs.personal-info"


class NodeState(Protocol):
    def has_basis(self, fingerprint: str) -> bool: ...

    def basis(self, fingerprint: str) -> Basis: ...

    def store_basis(self, basis: Basis, base_model: str) -> None: ...

    def personal_adapter(self, fingerprint: str) -> tuple[dict[str, torch.Tensor], int] | None:
        """(state, round it was derived in) for the basis `fingerprint`, or None."""

    def store_personal_adapter(self, state: dict[str, torch.Tensor], meta: AdapterMeta) -> None:
        """Keeps `state`; `meta` names its basis and (extra "round") the round it was derived in."""


def node_state_for(context: Context) -> NodeState:
    data_dir = context.node_config.get("data-dir")
    return DiskState(Path(str(data_dir))) if data_dir else ContextState(context)


class ContextState:
    """Simulation: records in `context.state`."""

    def __init__(self, context: Context):
        self.records = context.state

    def has_basis(self, fingerprint: str) -> bool:
        info = self.records.get(BASIS_INFO)
        return info is not None and info.get("fingerprint") == fingerprint and BASIS_RECORD in self.records

    def basis(self, fingerprint: str) -> Basis:
        if not self.has_basis(fingerprint):
            raise LoraXSError(f"this node holds no factors {fingerprint[:12]}")
        return unpack_basis(self.records[BASIS_RECORD], fingerprint)

    def store_basis(self, basis: Basis, base_model: str) -> None:
        self.records[BASIS_RECORD] = pack_basis(basis)
        self.records[BASIS_INFO] = ConfigRecord(
            {"fingerprint": basis.fingerprint, "rank": basis.rank, "base-model": base_model}
        )

    def personal_adapter(self, fingerprint: str):
        info = self.records.get(PERSONAL_INFO)
        if info is None or info.get("fingerprint") != fingerprint:
            return None
        return tensors_from_record(self.records[PERSONAL_RECORD]), int(info["round"])

    def store_personal_adapter(self, state, meta: AdapterMeta) -> None:
        self.records[PERSONAL_RECORD] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})
        self.records[PERSONAL_INFO] = ConfigRecord(
            {"fingerprint": meta.basis_fingerprint, "round": int(meta.extra.get("round", "0"))}
        )


class DiskState:
    """Deployment: files under <data-dir>/.loraxs/ (written atomically)."""

    def __init__(self, data_dir: Path):
        self.basis_dir = state_basis_dir(data_dir)
        self.personal_path = data_dir / STATE_FOLDER / FEDERATION_PERSONAL_ADAPTER
        self._bases: dict[str, Basis] = {}

    def has_basis(self, fingerprint: str) -> bool:
        if fingerprint not in self._bases:
            basis = find_cached_basis(fingerprint, [self.basis_dir])
            if basis is None:
                return False
            self._bases[fingerprint] = basis
        return True

    def basis(self, fingerprint: str) -> Basis:
        if not self.has_basis(fingerprint):
            raise LoraXSError(f"{self.basis_dir} holds no factors {fingerprint[:12]}")
        return self._bases[fingerprint]

    def store_basis(self, basis: Basis, base_model: str) -> None:
        store_basis(self.basis_dir, basis, base_model)
        self._bases[basis.fingerprint] = basis

    def personal_adapter(self, fingerprint: str):
        try:
            if not self.personal_path.is_file():
                return None
            state, meta = load_adapter(self.personal_path)
            round_ = int(meta.extra.get("round", "0"))
        except Exception:
            return None
        if meta.basis_fingerprint != fingerprint:
            return None
        return state, round_

    def store_personal_adapter(self, state, meta: AdapterMeta) -> None:
        save_adapter(self.personal_path, state, meta)
