"""Checking ONNX exports with onnxruntime: output parity with PyTorch, latency, accuracy.

Parity runs on inputs whose batch and sequence length differ from the export's trace shape
(proving the axes dynamic), one of them padded; for a causal LM only real tokens' logits count.
"""

import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from client.onnx.graph import OUTPUT_NAME, LogitsGraph
from shared.data.batches import IGNORE_INDEX

FP32_TOLERANCE = 1e-4  # max abs difference of the logits an fp32 export may show
LATENCY_BATCH, LATENCY_LENGTH = 1, 64
WARMUP_RUNS = 2
SAMPLE_TEXTS = (
    "The film was a delight from start to finish.",
    "Not worth the ticket.",
    "A slow, thoughtful story about two brothers who inherit a failing farm in the north.",
)

Batch = dict[str, np.ndarray]  # token input name -> (B, T) int64


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_batch(tokenizer, token_names: list[str], batch_size: int = LATENCY_BATCH) -> Batch:
    """(batch_size, 64) real tokens: the shape latency is measured at."""
    text = " ".join(SAMPLE_TEXTS * 8)
    encoded = tokenizer(
        [text] * batch_size, max_length=LATENCY_LENGTH, truncation=True, padding="max_length", return_tensors="np"
    )
    return {name: encoded[name].astype(np.int64) for name in token_names}


def sample_batches(tokenizer, token_names: list[str]) -> list[Batch]:
    """A padded (3, ~20) batch of short texts and the (1, 64) latency batch."""
    encoded = tokenizer(list(SAMPLE_TEXTS), padding=True, return_tensors="np")
    short = {name: encoded[name].astype(np.int64) for name in token_names}
    return [short, latency_batch(tokenizer, token_names)]


def torch_logits(graph: LogitsGraph, batch: Batch) -> np.ndarray:
    with torch.no_grad():
        return graph(*(torch.from_numpy(batch[name]) for name in graph.token_names)).float().numpy()


def ort_logits(session, batch: Batch, adapter: dict[str, np.ndarray] | None = None) -> np.ndarray:
    return session.run([OUTPUT_NAME], {**batch, **(adapter or {})})[0]


def max_abs_diff(a: np.ndarray, b: np.ndarray, attention_mask: np.ndarray) -> float:
    """Over (B, C) logits whole; over (B, T, V) logits at the positions of real tokens only."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if diff.ndim == 3:
        diff = diff[attention_mask.astype(bool)]  # (tokens, V)
    return float(diff.max())


def max_diff_over(batches: list[Batch], expected: list[np.ndarray], run) -> float:
    """Largest `max_abs_diff` between the `expected` logits and `run(batch)` over `batches`;
    NaN when any is NaN (non-finite logits on either side), which no check passes."""
    diffs = [max_abs_diff(e, run(b), b["attention_mask"]) for b, e in zip(batches, expected)]
    return float("nan") if any(math.isnan(d) for d in diffs) else max(diffs)


def median_ms(run, repeats: int) -> float:
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def other_user_adapter(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """A second, materially different adapter: each tensor plus seeded noise of its own RMS."""
    generator = torch.Generator().manual_seed(seed)
    other = {}
    for name, value in state.items():
        rms = float(value.float().pow(2).mean().sqrt()) or 1e-2
        other[name] = value + rms * torch.randn(value.shape, generator=generator)
    return other


def ort_accuracy(session, loader, token_names: list[str]) -> float:
    """Accuracy of an ONNX model on `loader` (`make_loader` batches), as `shared.training.evaluate`
    counts it: classes for seq-cls, next tokens (padding excluded) for a causal LM."""
    correct, counted = 0, 0
    for batch in loader:
        logits = ort_logits(session, {name: batch[name].numpy() for name in token_names})
        labels = batch["labels"].numpy()
        if logits.ndim == 2:  # (B, num_labels)
            correct += int((logits.argmax(-1) == labels).sum())
            counted += len(labels)
        else:  # (B, T, vocab): position t predicts token t + 1
            predicted = logits[:, :-1].argmax(-1)  # (B, T-1)
            target = labels[:, 1:]  # (B, T-1)
            mask = target != IGNORE_INDEX
            correct += int((predicted[mask] == target[mask]).sum())
            counted += int(mask.sum())
    return correct / max(counted, 1)
