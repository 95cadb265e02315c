"""Inputs from users and files: every bad adapter, factor file, cache entry, output path
and flag ends in the project's one-line error (or a safe fallback), never a traceback, a file
written through a symlink, a non-finite tensor on disk or exit 0 with unusable output."""

import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_bytes

from shared.artifacts import blob
from shared.artifacts.adapter_file import (
    adapter_meta,
    load_adapter,
    metadata_digest,
    save_adapter,
)
from shared.artifacts.atomic_write import write_atomically
from shared.artifacts.basis_file import basis_to_bytes, basis_to_tensors, load_basis, save_basis
from shared.artifacts.cache import find_cached_basis, store_basis
from shared.artifacts.open_adapter import read_adapter
from shared.base_models import build_adapted_model
from shared.cli import run_cli
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def adapted(tiny_bert_dir):
    config = LoraXSConfig(rank=4)
    model, basis = build_adapted_model(tiny_bert_dir, "seq-cls", config, labels=LABELS, seed=0)
    meta = adapter_meta(tiny_bert_dir, "seq-cls", config, basis, LABELS, kind="global")
    return adapter_state(model), basis, meta


def rewritten(path: Path, state: dict, change: dict, resign: bool = True) -> Path:
    """The adapter at `path` with metadata entries changed (the checksum recomputed when `resign`)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    metadata.update(change)
    if resign:
        metadata["metadata_sha256"] = metadata_digest(metadata)
    out = path.with_name("changed.safetensors")
    out.write_bytes(save_bytes({k: v.contiguous() for k, v in state.items()}, metadata=metadata))
    return out


# -- defect 2: no non-finite tensor on disk, no implausible values loaded ---------------------


def test_saving_a_non_finite_adapter_is_refused_and_writes_nothing(adapted, tmp_path):
    state, _, meta = adapted
    bad = {k: v.clone() for k, v in state.items()}
    next(iter(bad.values())).view(-1)[0] = float("nan")
    with pytest.raises(LoraXSError, match="NaN or Inf"):
        save_adapter(tmp_path / "a.safetensors", bad, meta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, message", [(3e38, "beyond"), (float("inf"), "NaN or Inf")])
def test_implausible_or_infinite_r_is_refused_on_load(adapted, tmp_path, value, message):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    bad = {k: v.clone() for k, v in state.items()}
    name = next(k for k in bad if k.endswith("lora_R"))
    bad[name].view(-1)[0] = value
    with pytest.raises(LoraXSError, match=message):
        load_adapter(rewritten(path, bad, {}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"alpha": "Infinity"}, "'alpha' must be a finite number"),
        ({"alpha": '"16"'}, "'alpha' must be a finite number"),
        ({"alpha": "-1"}, "'alpha' must be a finite number"),
        ({"rank": '"abc"'}, "'rank' must be an integer"),
        ({"rank": "true"}, "'rank' must be an integer"),
        ({"labels": "[0, 1]"}, "'labels' must be"),
        ({"targets": "{}"}, "'targets' must be"),
        ({"task": '"ner"'}, "'task' must be"),
        ({"base_model": '"evil\\nsecond line"'}, "'base_model' must be"),
        ({"extra": "[" * 5000}, "'extra' is not valid JSON"),
    ],
)
def test_metadata_of_the_wrong_type_is_one_line(adapted, tmp_path, change, message):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    with pytest.raises(LoraXSError, match=message) as caught:
        load_adapter(rewritten(path, state, change))
    assert "\n" not in str(caught.value)


def test_missing_metadata_is_one_line(adapted, tmp_path):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    data = path.read_bytes()
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    del metadata["rank"]
    metadata["metadata_sha256"] = metadata_digest(metadata)
    (tmp_path / "b.safetensors").write_bytes(save_bytes(state, metadata=metadata))
    with pytest.raises(LoraXSError, match="'rank' is missing"):
        load_adapter(tmp_path / "b.safetensors")


def test_bf16_r_is_one_line(adapted, tmp_path):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    with pytest.raises(LoraXSError, match="dtype bfloat16"):
        load_adapter(rewritten(path, bf16, {}))


# -- defect 5: the metadata is checksummed; an adapter's base model needs --model --------------


def test_changed_metadata_fails_its_checksum(adapted, tmp_path):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    with pytest.raises(LoraXSError, match="metadata does not match its checksum"):
        load_adapter(rewritten(path, state, {"base_model": json.dumps("/somewhere/else")}, resign=False))


@pytest.mark.parametrize("resign", [False, True])
def test_format_version_1_is_refused_checksum_or_not(adapted, tmp_path, resign):
    """Marking a file as version 1 once skipped the metadata checksum; now it is refused."""
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    old = rewritten(path, state, {"format_version": "1", "base_model": json.dumps("/somewhere/else")}, resign=resign)
    with pytest.raises(LoraXSError, match="format version 1, whose metadata carries no checksum"):
        load_adapter(old)


def test_an_adapters_base_model_is_loaded_only_when_model_names_it(adapted, tmp_path, tiny_bert_dir):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, dataclasses.replace(meta, base_model="someone/any-hub-repo"))
    with pytest.raises(LoraXSError, match="pass --model"):
        read_adapter(path)
    assert read_adapter(path, model="someone/any-hub-repo").meta.base_model == "someone/any-hub-repo"


# -- defect 4: the atomic write never follows a symlink ---------------------------------------


def test_write_atomically_never_writes_through_a_symlinked_tmp(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.safetensors"
    (tmp_path / "out.safetensors.tmp").symlink_to(victim)
    write_atomically(out, b"new bytes", "adapter")
    assert victim.read_text() == "precious"
    assert out.read_bytes() == b"new bytes" and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "out.safetensors.tmp", "victim.txt"]


def test_write_atomically_keeps_the_umask_mode(tmp_path):
    write_atomically(tmp_path / "f", b"x", "adapter")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


# -- defect 7/8: factor files, the cache, sizes, unreadable files -----------------------------


def basis_with_metadata(basis: Basis, path: Path, **metadata) -> Path:
    data = basis_to_bytes(basis, "m")
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    meta.update(metadata)
    path.write_bytes(save_bytes(basis_to_tensors(basis), metadata=meta))
    return path


@pytest.mark.parametrize("rank", ["abc", "", "-1", "9" * 5000])
def test_factor_file_with_a_bad_rank_is_one_line_and_a_cache_miss(adapted, tmp_path, rank):
    _, basis, _ = adapted
    cache = tmp_path / "cache"
    cache.mkdir()
    path = basis_with_metadata(basis, cache / f"{basis.fingerprint}.safetensors", rank=rank)
    with pytest.raises(LoraXSError, match="'rank'"):
        load_basis(path)
    assert find_cached_basis(basis.fingerprint, [cache]) is None


def test_factor_file_holding_nan_is_refused(adapted, tmp_path):
    _, basis, _ = adapted
    name = next(iter(basis.factors))
    lora_B, lora_A = basis.factors[name]
    bad = Basis(rank=basis.rank, factors={**basis.factors, name: (lora_B.clone().fill_(float("nan")), lora_A)})
    with pytest.raises(LoraXSError, match="NaN or Inf"):
        save_basis(tmp_path / "b.safetensors", bad, "m")
    (tmp_path / "c.safetensors").write_bytes(
        save_bytes(
            basis_to_tensors(bad),
            metadata={
                "format": "loraxs-basis",
                "format_version": "1",
                "base_model": "m",
                "rank": str(basis.rank),
                "fingerprint": bad.fingerprint,
            },
        )
    )
    with pytest.raises(LoraXSError, match="NaN or Inf"):
        load_basis(tmp_path / "c.safetensors")


def test_a_cache_entry_that_raises_anything_counts_as_missing(adapted, tmp_path, monkeypatch):
    _, basis, _ = adapted
    store_basis(tmp_path, basis, "m")
    monkeypatch.setattr("shared.artifacts.cache.load_basis", lambda _path: 1 / 0)
    assert find_cached_basis(basis.fingerprint, [tmp_path]) is None


def test_files_over_their_cap_are_refused_before_reading(adapted, tmp_path, monkeypatch):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)
    monkeypatch.setitem(blob.MAX_FILE_BYTES, "adapter", 100)
    with pytest.raises(LoraXSError, match="more than the 100 bytes allowed"):
        load_adapter(path)


def test_a_header_over_its_cap_is_refused(tmp_path):
    header = b"{" + b" " * (blob.MAX_HEADER_BYTES + 10) + b"}"
    (tmp_path / "a.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(LoraXSError, match="header of"):
        load_adapter(tmp_path / "a.safetensors")


def test_deeply_nested_header_is_one_line(tmp_path):
    header = b"[" * 200_000
    (tmp_path / "a.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(LoraXSError, match="not a valid adapter file"):
        load_adapter(tmp_path / "a.safetensors")


def test_unreadable_adapter_is_one_line(adapted, tmp_path, monkeypatch):
    state, _, meta = adapted
    path = tmp_path / "a.safetensors"
    save_adapter(path, state, meta)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("shared.artifacts.untrusted_file.os.open", refuse)
    with pytest.raises(LoraXSError, match="cannot read adapter file .*Permission denied"):
        load_adapter(path)


def test_corrupt_personal_adapter_in_the_node_state_is_re_derived(adapted, tmp_path):
    from client.node_state import FEDERATION_PERSONAL_ADAPTER, DiskState

    state, basis, meta = adapted
    node = DiskState(tmp_path)
    node.personal_path.parent.mkdir(parents=True)
    save_adapter(node.personal_path, state, meta)
    rewritten(node.personal_path, state, {"alpha": '"x"'}).replace(node.personal_path)
    assert node.personal_adapter(basis.fingerprint) is None
    assert node.personal_path.name == FEDERATION_PERSONAL_ADAPTER


# -- run_cli: one line, exit 1, for whatever escaped ------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied"),
        MemoryError(),
        RecursionError("maximum recursion depth exceeded"),
        ValueError("bad\nvalue"),
    ],
)
def test_run_cli_turns_escaped_input_errors_into_one_line(error, capsys):
    def work():
        raise error

    assert run_cli(work, "prog") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("prog: error: ")


def test_run_cli_user_error_is_exit_1(capsys):
    def work():
        raise LoraXSError("nope")

    assert run_cli(work) == 1
    assert capsys.readouterr().err == "error: nope\n"
