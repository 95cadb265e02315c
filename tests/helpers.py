"""Helpers shared by several test modules: data folders, CLI runners, recorded federations,
export checks, process checks (fixtures live in conftest.py)."""

import contextlib
import io
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from client.app import make_client_app
from client.export import main as export_main
from client.run import main as client_run_main
from deployment.process_tree import pids_with_environment
from deployment.supernode import quoted_config_value
from server.federation import run_federation
from shared.artifacts.adapter_file import adapter_meta, save_adapter
from shared.base_models import build_adapted_model
from shared.crypto.at_rest import KeySource, key_from_file
from shared.federation.protocol import CONFIG, STACKED_R
from shared.federation.run_config import FederationConfig
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state
from simulations.in_process import InProcessGrid

REPO = Path(__file__).resolve().parents[1]
LABELS = ["neg", "pos"]


def make_key_file(path: Path) -> KeySource:
    """A fresh random key file, as a user makes one (`openssl rand -hex 32 > FILE; chmod 600 FILE`)."""
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)
    return key_from_file(path)


# --- a device's folder and `python -m client.run` ------------------------------------------
RANK = 4

GOOD = ["a wonderful great film", "superb acting, great story", "great fun and wonderful"]

BAD = ["an awful boring film", "bad acting, boring story", "boring and awful"]


def write_reviews(folder: Path, n: int = 20, labels=("fresh", "rotten")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reviews.jsonl", "w") as out:
        for i in range(n):
            label = labels[i % len(labels)]
            text = (GOOD if label == labels[0] else BAD)[i % 3] + f" #{i}"
            out.write(json.dumps({"text": text, "label": label}) + "\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (recursively) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = client_run_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def global_adapter(model_dir: str, path: Path, labels=("fresh", "rotten"), **meta_changes) -> Path:
    """An adapter as a federation would ship it (untrained R, seeded head)."""
    config = LoraXSConfig(rank=RANK)
    model, basis = build_adapted_model(model_dir, "seq-cls", config, labels=list(labels))
    meta = adapter_meta(model_dir, "seq-cls", config, basis, list(labels), kind="global")
    save_adapter(path, adapter_state(model), replace(meta, **meta_changes))
    return path


# --- a small federation on the in-process Grid ---------------------------------------------
NUM_CLIENTS = 5
WORDS = {0: ["bad", "awful", "boring", "dull", "weak"], 1: ["great", "superb", "fun", "moving", "fresh"]}


def write_word_reviews(folder, count, labels=LABELS, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "reviews.jsonl", "w") as out:
        for i in range(count):
            y = i % 2
            text = " ".join(rng.choice(WORDS[y]) for _ in range(6)) + " film"
            out.write(json.dumps({"text": text, "label": labels[y]}) + "\n")
    return folder


def make_config(model_dir, data_dir, out_dir, **changes) -> FederationConfig:
    config = FederationConfig(
        num_clients=NUM_CLIENTS,
        num_server_rounds=2,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        final_eval_fraction=1.0,
        model=model_dir,
        dataset=data_dir,
        partition="iid",
        rank=4,
        lora_alpha=4.0,
        lr=0.01,
        head_lr=0.01,
        batch_size=8,
        eval_max_examples=64,
        out_dir=str(out_dir),
        strategy="fedavg",  # the plain weighted mean the exactness tests check
    )
    return replace(config, **changes)


class RecordingGrid(InProcessGrid):
    """Keeps every (message, reply) pair; `before(grid, message)` may tamper with a node first."""

    def __init__(self, config, before=None, client_app=None):
        super().__init__(client_app or make_client_app(config), config.num_clients)
        self.before = before
        self.log = []

    def deliver(self, message):
        if self.before:
            self.before(self, message)
        reply = super().deliver(message)
        self.log.append((message, message_from_proto(message_to_proto(reply))))  # as received
        return reply

    def exchanges(self, server_round=None, kind=None):
        return [
            (m, r)
            for m, r in self.log
            if (server_round is None or m.content["config"]["server-round"] == server_round)
            and (kind is None or _kind(m) == kind)
        ]


def _kind(message):
    return "final" if message.content["config"].get("final-evaluation") else message.metadata.message_type


def run_recorded(config, **grid_args):
    grid = RecordingGrid(config, **grid_args)
    return run_federation(grid, config), grid


def lying_client(config, lie):
    honest = make_client_app(config)

    def client_app(message, context):
        reply = honest(message, context)
        if message.metadata.message_type in ("train", "evaluate"):
            lie(reply, context.node_config["partition-id"], message.metadata.message_type)
        return reply

    return client_app


# --- `python -m client.export` and its files -----------------------------------------------
TOLERANCE = 1e-4
TEXTS = ["a quiet and lovely film", "bad", "the plot meanders but the actors hold it together well"]


def make_adapter(model_dir: str, task: str, path: Path, seed: int = 0, std: float = 1.0) -> Path:
    """An adapter whose R matrices (and head) are seeded random values that change the outputs."""
    labels = LABELS if task == "seq-cls" else None
    config = LoraXSConfig(rank=4)
    model, basis = build_adapted_model(model_dir, task, config, labels=labels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    save_adapter(path, adapter_state(model), adapter_meta(model_dir, task, config, basis, labels))
    return path


def export_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def device_batch(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenize as a device would: the exported tokenizer.json and the export description only."""
    from tokenizers import Tokenizer

    description = json.loads((folder / "model.export.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(description["max_length"])
    tokenizer.enable_padding(pad_id=0)
    encodings = tokenizer.encode_batch(texts)
    arrays = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return {name: np.array(arrays[name], dtype=np.int64) for name in description["inputs"]}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def printed_diff(stdout: str, what: str) -> float:
    match = re.search(rf"^\s+(\S+)\s+{re.escape(what)}", stdout, re.MULTILINE)
    assert match, stdout
    return float(match.group(1))


# --- commands and the processes they leave -------------------------------------------------
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def tagged_run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs `command` with a unique environment tag that every process it starts inherits
    (Ray's GCS, raylet and workers included), then checks none of them is left."""
    tag = uuid.uuid4().hex
    env = {**os.environ, "LORAXS_TEST_RUN": tag, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    deadline = time.monotonic() + 20  # Ray reaps its workers right after the driver exits
    while (left := processes_tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes outlived the command: {left}"
    return done


def processes_tagged(tag: str) -> list[int]:
    return pids_with_environment("LORAXS_TEST_RUN", tag)


def assert_all_gone(pids: set[int]) -> None:
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left running: {left}"


def deployment_run_config(model_dir: str, out_dir: Path, labels: str) -> str:
    values = {
        "num-clients": 2,
        "num-server-rounds": 2,
        "fraction-train": 1.0,
        "final-eval-fraction": 1.0,
        "model": model_dir,
        "dataset": "",
        "labels": labels,
        "rank": 4,
        "personalize": "finetune",
        "personal-steps": 2,
        "local-epochs": 1,
        "batch-size": 8,
        "max-length": 16,
        "out-dir": str(out_dir),
    }
    return " ".join(f"{k}={quoted_config_value(v) if isinstance(v, str) else v}" for k, v in values.items())


# --- replies as the strategy receives them ----------------------------------------------------
FINGERPRINT = "ab" * 32


def full_arrays(value: float) -> ArrayRecord:
    return ArrayRecord(
        {
            STACKED_R: Array(np.full((2, 3, 3), value, np.float32)),
            "classifier.bias": Array(np.full(2, value, np.float32)),
        }
    )


def reply_from(node: int, content: RecordDict) -> Message:
    message = Message(RecordDict({CONFIG: ConfigRecord({"server-round": 3})}), dst_node_id=node, message_type="train")
    message.metadata.__dict__["_message_id"] = f"{node:064x}"
    return Message(content, reply_to=message)


def within(seconds: float, call):
    """Runs `call` in a thread; fails the test if it has not returned after `seconds` (a hang)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
