"""What a deployed ClientApp pays per message before it works: every Flower message runs in a
fresh `flwr-clientapp` process that imports `client.app`, so nothing that a train message does not
need may be imported at module level (benchmarks/studies/results/deployment_overhead.md)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Seconds each cost on import when they were pulled in (flwr_datasets -> seaborn -> scipy, matplotlib).
NOT_FOR_A_TRAIN_MESSAGE = (
    "flwr_datasets",
    "seaborn",
    "matplotlib",
    "scipy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "peft",
)


def test_importing_the_clientapp_skips_partitioning_plotting_and_onnx():
    code = (
        "import sys, client.app, client.message_work; "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(NOT_FOR_A_TRAIN_MESSAGE)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [], f"client.app imports {done.stdout.strip()}"


def test_a_partition_query_imports_no_torch():
    """The one query each node answers before round 1 (server/strategy.py) runs in its own
    flwr-clientapp process too: with torch imported, 25 of them at once were 25 processes of
    ~417 MiB that starved a 2-core SuperLink (benchmarks/results/deployment_load.md)."""
    code = (
        "import sys; from flwr.app import Context, Message, MessageType, RecordDict; "
        "from flwr.supercore.task_identity import TaskIdentity; "
        "from client.app import app; "
        "TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0; "
        "msg = Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY); "
        "msg.metadata.__dict__['_message_id'] = 'q'; "
        "ctx = Context(run_id=1, node_id=7, node_config={'partition-id': 3}, state=RecordDict(), run_config={}); "
        "reply = app(msg, ctx); "
        "print(reply.content['status']['partition-id'], 'torch' in sys.modules, "
        "'client.message_work' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "False", "False"]


def test_partitioning_still_works_with_the_lazy_import():
    from datasets import Dataset

    from shared.data.partition import partition_dataset

    ds = Dataset.from_dict({"text": [str(i) for i in range(12)], "label": [i % 2 for i in range(12)]})
    parts = partition_dataset(ds, 3, "iid", seed=0)
    assert sorted(t for p in parts for t in p["text"]) == sorted(ds["text"])
    parts = partition_dataset(ds, 2, "dirichlet", alpha=1.0, seed=0)
    assert sum(len(p) for p in parts) == len(ds)
