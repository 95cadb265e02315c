"""What a deployed ClientApp pays per message before it works: every Flower message runs in a
fresh `flwr-clientapp` process that imports `client.app`, so nothing that a train message does not
need may be imported at module level (benchmarks/results/deployment_overhead.md)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Seconds each cost on import when they were pulled in (flwr_datasets -> seaborn -> scipy, matplotlib).
NOT_FOR_A_TRAIN_MESSAGE = ("flwr_datasets", "seaborn", "matplotlib", "scipy", "onnx", "onnxruntime",
                           "onnxscript", "peft")


def test_importing_the_clientapp_skips_partitioning_plotting_and_onnx():
    code = ("import sys, client.app; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(NOT_FOR_A_TRAIN_MESSAGE)!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [], f"client.app imports {done.stdout.strip()}"


def test_partitioning_still_works_with_the_lazy_import():
    from datasets import Dataset

    from shared.data.partition import partition_dataset

    ds = Dataset.from_dict({"text": [str(i) for i in range(12)], "label": [i % 2 for i in range(12)]})
    parts = partition_dataset(ds, 3, "iid", seed=0)
    assert sorted(t for p in parts for t in p["text"]) == sorted(ds["text"])
    parts = partition_dataset(ds, 2, "dirichlet", alpha=1.0, seed=0)
    assert sum(len(p) for p in parts) == len(ds)
