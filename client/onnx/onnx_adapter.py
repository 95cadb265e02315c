"""One shared base graph, every user's adapter: onnxruntime's multi-LoRA files and how to run them.

The base graph (`<stem>.adapter-base.onnx`) holds the base weights and the frozen factors as
constants; every r x r `*.lora_R` and the head are *overridable initializers* (zeros) named as in
the adapter file. A user's `.onnx_adapter` (onnxruntime.AdapterFormat) holds exactly those tensors;
`onnxruntime.LoraAdapter` memory-maps it and `RunOptions.add_active_adapter` swaps it in for one
run. No PyTorch here: `client.predict` imports this module.

Sharp edges of onnxruntime 1.32's adapters, each reproduced in tests/test_onnx_adapter.py:
- Two active adapters setting one name: the first one added wins, silently.
  -> `run_with_adapter` takes exactly one adapter.
- An active adapter overrides a value fed for the same input name, silently.
  -> `run_with_adapter` refuses a feed naming an adapter parameter.
- `RunOptions` keeps a raw pointer to the `LoraAdapter`: one garbage-collected before `run` is
  not applied. -> `LoadedAdapter` owns it for as long as it is used.
- The Python `run` demands every plain graph input in the feed before it looks at the adapters,
  so adapter parameters must be overridable initializers (`make_overridable`), not plain inputs.
- The file has no metadata but two integers: the model version carries the first 28 bits of
  the basis fingerprint (`basis_version`), checked against the export's description.
- The format has no checksum: a flipped byte loads silently. -> `write_onnx_adapter` writes
  `<file>.sha256` beside it (sha256sum's format, also recorded in the export's description),
  and `load_onnx_adapter` refuses a file whose bytes do not match it, or that has none.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.artifacts.untrusted_file import read_untrusted, read_untrusted_text
from shared.errors import LoraXSError

SUFFIX = ".onnx_adapter"
CHECKSUM_SUFFIX = ".sha256"  # beside the adapter: "<sha256 hex>  <file name>"
FINGERPRINT_HEX_DIGITS = 7  # 28 bits: AdapterFormat's model version is a 32-bit signed int
MAX_ADAPTER_BYTES = 1024 * 2**20  # the r x r matrices and the head (a causal LM's head is large)


def basis_version(fingerprint: str) -> int:
    """The model version an `.onnx_adapter` of this basis carries."""
    return int(fingerprint[:FINGERPRINT_HEX_DIGITS], 16)


def write_onnx_adapter(path: Path, tensors: dict[str, np.ndarray], fingerprint: str) -> None:
    """tensors: adapter parameter name -> float32 array (each `lora_R` (r, r), the head)."""
    import onnxruntime as ort

    bad = [name for name, value in tensors.items() if not np.isfinite(value).all()]
    if bad:
        raise LoraXSError(f"adapter tensor {bad[0]} holds NaN or Inf; nothing was written")
    adapter = ort.AdapterFormat()
    adapter.set_model_version(basis_version(fingerprint))
    adapter.set_parameters(
        {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            for name, value in tensors.items()
        }
    )
    adapter.export_adapter(str(path))
    path = Path(path)
    checksum_file(path).write_text(f"{file_sha256(path)}  {path.name}\n")


def checksum_file(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(read_untrusted(path, "adapter", MAX_ADAPTER_BYTES)).hexdigest()


def recorded_sha256(path: Path, fallback: str | None = None) -> str:
    """The checksum written beside `path`, else `fallback` (the export description's, for its
    own adapter); a file with neither is refused."""
    sidecar = checksum_file(path)
    if not sidecar.exists() and not sidecar.is_symlink():
        if fallback:
            return fallback
        raise LoraXSError(
            f"adapter {path} has no checksum file {sidecar.name} beside it; "
            "copy it together with its adapter (or export the adapter again)"
        )
    text = read_untrusted_text(sidecar, "checksum file", 4096, encoding="ascii").split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise LoraXSError(f"checksum file {sidecar} holds no sha256 digest")
    return text[0]


def make_overridable(path: Path, shapes: dict[str, list[int]], external_data: bool) -> None:
    """Gives each named graph input of the ONNX file at `path` a zero initializer, in place: the
    input stays overridable (by a feed or an active adapter) but need not be fed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inputs = {value.name for value in model.graph.input}
    missing = sorted(set(shapes) - inputs)
    if missing:
        raise LoraXSError(f"the graph has no input {missing[0]} to make overridable")
    for name, shape in shapes.items():
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name))
    onnx.save(
        model, str(path), save_as_external_data=external_data, location=path.name + ".data" if external_data else None
    )


@dataclass
class LoadedAdapter:
    """A checked `.onnx_adapter`: its parameters' shapes, and the memory-mapped LoraAdapter."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    runtime: object  # onnxruntime.LoraAdapter; must outlive every run it is active in


def load_onnx_adapter(
    path: str | Path, expected: dict[str, list[int]], fingerprint: str, sha256: str | None = None
) -> LoadedAdapter:
    """Reads `path` and checks it against its checksum (the `.sha256` file beside it, else
    `sha256`), the base graph's adapter parameters (`expected`: name -> shape) and basis; a
    file that does not fit is one LoraXSError line."""
    import onnxruntime as ort

    path = Path(path).expanduser()
    actual = file_sha256(path)  # a regular file within the cap, never a pipe or a device
    if actual != recorded_sha256(path, sha256):
        raise LoraXSError(f"adapter {path} is corrupt: its bytes do not match its sha256 checksum")
    try:
        stored = ort.AdapterFormat.read_adapter(str(path))
        shapes = {name: tuple(value.shape()) for name, value in stored.get_parameters().items()}
        version = stored.get_model_version()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoraXSError(f"{path} is not an onnxruntime adapter file ({first[-120:]})") from None
    if version != basis_version(fingerprint):
        raise LoraXSError(
            f"{path} was made for another basis (model version {version}, this export's "
            f"basis {fingerprint[:12]} is {basis_version(fingerprint)}); export it against this base"
        )
    if set(shapes) != set(expected):
        unknown = sorted(set(shapes) - set(expected)) or sorted(set(expected) - set(shapes))
        raise LoraXSError(
            f"{path} does not fit this base graph: parameter {unknown[0]} is "
            f"{'unknown to the graph' if unknown[0] in shapes else 'missing'}"
        )
    for name, shape in shapes.items():
        if list(shape) != list(expected[name]):
            raise LoraXSError(
                f"{path} does not fit this base graph: {name} is {list(shape)}, "
                f"the graph takes {list(expected[name])} (another rank or label count?)"
            )
    runtime = ort.LoraAdapter()
    try:
        runtime.Load(str(path))
    except Exception as err:
        raise LoraXSError(f"{path} is not an onnxruntime adapter file ({str(err).strip()[:120]})") from None
    return LoadedAdapter(path, shapes, runtime)


def run_with_adapter(session, output: str, feed: dict[str, np.ndarray], adapter: LoadedAdapter) -> np.ndarray:
    """One run of the base graph with `adapter` active. A feed naming an adapter parameter is
    refused: onnxruntime would silently let the adapter win."""
    import onnxruntime as ort

    clash = sorted(set(feed) & set(adapter.shapes))
    if clash:
        raise LoraXSError(f"the feed sets {clash[0]}, which the active adapter {adapter.path.name} sets too")
    options = ort.RunOptions()
    options.add_active_adapter(adapter.runtime)
    return session.run([output], feed, options)[0]
