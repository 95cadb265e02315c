"""The export description (`<stem>.export.json`) as a device reads it: untrusted JSON, checked
field by field before anything uses it.

A schema of types and ranges (labels, max_length, inputs, output, model files, adapter
parameters, the `.onnx_adapter` entry); file names must be plain names inside the folder. Keys
it does not know are left alone (newer exports may add some). The checker never raises
anything but LoraXSError: whatever it does not expect is a rejection with a reason. No torch:
`client.predict` imports it.
"""

import re

from shared.errors import LoraXSError

FORMAT = "loraxs-onnx-export"
TASKS = ("seq-cls", "causal-lm")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MODEL_KINDS = ("fp32", "int8", "adapter-input", "adapter-base")
MAX_LABELS = 1000
MAX_TOKENS = 2**20  # no model here has more positions; a larger max_length is a broken file
MAX_ADAPTER_ELEMENTS = 2**28
SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plain_file_name(name, what: str) -> str:
    """A file name inside the export folder: no folder part, no `..`, not hidden, printable."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 255
        or not name.isprintable()
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or "\0" in name
    ):
        raise LoraXSError(f"{what} must be a plain file name inside the folder, got {str(name)[:80]!r}")
    return name


def _check_labels(description: dict) -> None:
    labels = description.get("labels")
    if description["task"] == "seq-cls":
        if (
            not isinstance(labels, list)
            or not 2 <= len(labels) <= MAX_LABELS
            or not all(isinstance(label, str) and label and label.isprintable() for label in labels)
        ):
            raise LoraXSError(f"'labels' must be a list of 2 to {MAX_LABELS} printable names")
        if len(set(labels)) != len(labels):
            raise LoraXSError("'labels' names a class twice")


def _check_lengths(description: dict) -> None:
    positions = description.get("max_positions")
    if positions is not None and (not _is_int(positions) or not 2 <= positions <= MAX_TOKENS):
        raise LoraXSError(f"'max_positions' must be an integer in [2, {MAX_TOKENS}], got {str(positions)[:40]!r}")
    length, limit = description.get("max_length"), positions or MAX_TOKENS
    if not _is_int(length) or not 2 <= length <= limit:
        where = f"the model's {positions} positions" if positions else f"{MAX_TOKENS}"
        raise LoraXSError(f"'max_length' must be an integer in [2, {where}], got {str(length)[:40]!r}")


def _check_io(description: dict) -> None:
    inputs = description.get("inputs")
    if not isinstance(inputs, dict) or "input_ids" not in inputs or not set(inputs) <= set(TOKEN_INPUTS):
        raise LoraXSError(f"'inputs' must name input_ids and only these inputs: {', '.join(TOKEN_INPUTS)}")
    output = description.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("name"), str) or not output["name"]:
        raise LoraXSError("'output' must name the graph output")


def _check_models(description: dict) -> None:
    models = description.get("models")
    if not isinstance(models, dict) or not models:
        raise LoraXSError("'models' must map model kinds to file names")
    for kind, name in models.items():
        if kind not in MODEL_KINDS:
            raise LoraXSError(f"'models' names an unknown kind {str(kind)[:40]!r}")
        plain_file_name(name, f"the {kind} model file")


def _check_adapter(description: dict) -> None:
    shapes = description.get("adapter_inputs")
    if shapes is not None:
        if not isinstance(shapes, dict) or not shapes:
            raise LoraXSError("'adapter_inputs' must map parameter names to shapes")
        for name, shape in shapes.items():
            if (
                not isinstance(name, str)
                or not name
                or not isinstance(shape, list)
                or not 1 <= len(shape) <= 4
                or not all(_is_int(d) and 1 <= d <= MAX_ADAPTER_ELEMENTS for d in shape)
            ):
                raise LoraXSError(f"'adapter_inputs' has a malformed entry {str(name)[:80]!r}")
    entry = description.get("onnx_adapter")
    if entry is not None:
        if not isinstance(entry, dict) or not _is_int(entry.get("model_version")):
            raise LoraXSError("'onnx_adapter' must give the file and its model_version")
        plain_file_name(entry.get("file"), "the .onnx_adapter file")
        if "sha256" in entry and not (isinstance(entry["sha256"], str) and SHA256.fullmatch(entry["sha256"])):
            raise LoraXSError("'onnx_adapter' sha256 must be 64 lowercase hex digits")
    fingerprint = description.get("basis_fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{7,128}", fingerprint)):
        raise LoraXSError("'basis_fingerprint' must be a hex digest")


def check_description(description: object, source: str) -> dict:
    """`description` (parsed JSON) if it is a well-formed export description; else one
    LoraXSError line naming `source` and the field."""
    try:
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise LoraXSError("not a client.export description")
        if description.get("task") not in TASKS:
            raise LoraXSError(f"'task' must be one of {', '.join(TASKS)}")
        for check in (_check_labels, _check_lengths, _check_io, _check_models, _check_adapter):
            check(description)
    except LoraXSError as err:
        raise LoraXSError(f"{source}: {err}") from None
    except Exception as err:
        raise LoraXSError(f"{source}: malformed description ({type(err).__name__})") from None
    return description
