"""Several ONNX graphs of one model, their frozen weights on disk once: one external-data file
that every graph points into (offset, length), each distinct tensor stored once."""

import hashlib
from pathlib import Path

ALIGNMENT = 4096  # page-aligned offsets: onnxruntime can memory-map them
INLINE_BYTES = 1024  # smaller tensors stay inside their graph


def share_weights(graphs: list[Path], data_name: str) -> int:
    """Rewrites every graph at `graphs` (saved with `<name>.data` external data or none) to keep
    its tensors of INLINE_BYTES or more in `data_name` beside it; removes the old `.data` files.
    -> bytes of the shared file."""
    import onnx
    from onnx.external_data_helper import set_external_data

    folder = graphs[0].parent
    stored: dict[bytes, tuple[int, int]] = {}  # sha256 -> (offset, length)
    with open(folder / data_name, "wb") as data:
        for path in graphs:
            model = onnx.load(str(path), load_external_data=True)
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < INLINE_BYTES:
                    continue
                key = hashlib.sha256(raw).digest()
                if key not in stored:
                    offset = -(-data.tell() // ALIGNMENT) * ALIGNMENT
                    data.seek(offset)
                    data.write(raw)
                    stored[key] = (offset, len(raw))
                offset, length = stored[key]
                set_external_data(tensor, location=data_name, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save(model, str(path))
            path.with_name(path.name + ".data").unlink(missing_ok=True)
        return data.tell()
