"""Training through onnxruntime (client.run --runtime onnx, node config runtime = "onnx") against
the PyTorch runtime, on this machine, side by side in one run.

    python -m benchmarks.onnx_training [--model-dir DIR] [--parts step split folders message size]
                                      [--lengths 32 64 128] [--batch 16] [--repeats 5] [--train-blocks 2]
                                      [--folders debates] [--seeds 0] [--out DIR]

- step:    one training step (loss + gradients of every R and the head) on identical batches of
           `--batch` x each length: the exported graph in onnxruntime (graph optimizations basic
           and all) against PyTorch eager (the recipe's TorchBackend), median of `--repeats`.
- split:   one training step when only the top `--train-blocks` blocks train: onnxruntime's full
           step graph, its upper step graph (the hidden states entering the top blocks cached, as
           in every epoch after the first; the first step, which also runs the lower graph, apart)
           and PyTorch (TorchBackend with train_blocks, cached), median of `--repeats` after one
           warm-up each, interleaved.
- folders: `client.run` on small real folders (benchmarks/small_folders.py), each runtime in a
           fresh process: held-out accuracy, wall seconds, peak RSS (wait4).
- message: one training message of a deployed node (the ClientApp in a fresh process, 16
           examples, one local epoch): wall seconds and peak RSS, torch node against onnx node.
- size:    site-packages of a fresh `pip install --no-deps . -r deployment/device-requirements.txt`
           virtualenv against this interpreter's (the full install).
MiniLM artifacts are exported into a temporary folder unless --model-dir names some.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.predict_startup import LAUNCHER
from benchmarks.result_files import RESULTS, command_line, footer, goal, goal_lines, machine_now, write_result

REPO = Path(__file__).resolve().parents[1]
PARTS = ("step", "split", "folders", "message", "size")


def run_measured(argv: list[str], cwd: Path = REPO, env: dict | None = None) -> dict:
    """Wall seconds, peak RSS (MiB, wait4 of a fresh launcher's child) and stdout of `argv`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - start
    line = [x for x in done.stderr.splitlines() if x.startswith("LAUNCHER")][-1].split()
    if int(line[1]) != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {done.stderr[-1500:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(int(line[2]) / 1024, 1), "stdout": done.stdout}


def step_times(model_dir: Path, lengths: list[int], batch: int, repeats: int) -> list[dict]:
    import torch

    from client.onnx_training.backend import OnnxBackend
    from client.onnx_training.folder import open_training_folder
    from shared.base_models import build_adapted_model
    from shared.loraxs.config import LoraXSConfig
    from shared.recipe.torch_backend import TorchBackend, load_params

    folder = open_training_folder(model_dir)
    d = folder.description
    model, basis = build_adapted_model(d["base_model"], "seq-cls", LoraXSConfig(rank=d["rank"]), labels=["a", "b"])
    assert basis.fingerprint == folder.fingerprint
    torch_backend = TorchBackend(model)
    backends = {
        "onnxruntime (basic)": OnnxBackend(folder, threads=torch.get_num_threads(), optimization="basic"),
        "onnxruntime (all)": OnnxBackend(folder, threads=torch.get_num_threads()),
        "onnxruntime (all, arena)": OnnxBackend(folder, threads=torch.get_num_threads(), arena=True),
    }
    rng = np.random.default_rng(0)
    params = {
        "lora_R": (0.05 * rng.standard_normal(d["shapes"]["lora_R"])).astype(np.float32),
        "head_weight": (0.1 * rng.standard_normal((2, d["hidden_size"]))).astype(np.float32),
        "head_bias": np.zeros(2, np.float32),
    }
    load_params(model, params)
    rows = []
    for length in lengths:
        ids = rng.integers(1000, 20000, (batch, length))
        data = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
            "labels": np.arange(batch) % 2,
            "example_index": np.arange(batch),
        }
        timed, grads = {}, {}
        runs = {
            "PyTorch eager": lambda: torch_backend.loss_and_grads(data, params),
            **{name: (lambda b=b: b.loss_and_grads(data, params)) for name, b in backends.items()},
        }
        for _ in range(repeats):  # interleaved, so load changes hit every runtime alike
            for name, run in runs.items():
                start = time.perf_counter()
                _, grads[name] = run()
                timed.setdefault(name, []).append(time.perf_counter() - start)
        diff = max(float(np.abs(grads[n]["lora_R"] - grads["PyTorch eager"]["lora_R"]).max()) for n in backends)
        ms = {name: round(1000 * statistics.median(t[1:] or t), 1) for name, t in timed.items()}
        rows.append(
            {
                "batch": batch,
                "length": length,
                "ms": ms,
                "max_abs_grad_diff": diff,
                "ratio_all": round(ms["onnxruntime (all)"] / ms["PyTorch eager"], 3),
                "ratio_basic": round(ms["onnxruntime (basic)"] / ms["PyTorch eager"], 3),
                "ratio_arena": round(ms["onnxruntime (all, arena)"] / ms["PyTorch eager"], 3),
            }
        )
        print(f"step {batch}x{length}: {ms}", file=sys.stderr, flush=True)
    return rows


def split_step_times(model_dir: Path, lengths: list[int], batch: int, repeats: int, train_blocks: int) -> list[dict]:
    import torch

    from client.onnx_training.backend import OnnxBackend
    from client.onnx_training.folder import open_training_folder
    from shared.base_models import build_adapted_model
    from shared.loraxs.config import LoraXSConfig
    from shared.recipe.torch_backend import TorchBackend

    folder = open_training_folder(model_dir)
    d = folder.description
    if not folder.split or folder.split["train_blocks"] != train_blocks:
        raise SystemExit(
            f"{model_dir} holds no graphs split at {train_blocks} blocks: "
            f"client.export --training DIR --train-blocks {train_blocks}"
        )
    model, basis = build_adapted_model(d["base_model"], "seq-cls", LoraXSConfig(rank=d["rank"]), labels=["a", "b"])
    assert basis.fingerprint == folder.fingerprint
    threads = torch.get_num_threads()
    full, split = OnnxBackend(folder, threads=threads), OnnxBackend(folder, threads=threads)
    full.train_top_blocks(None)
    split.train_top_blocks(train_blocks)
    cached_torch = TorchBackend(model, train_blocks=train_blocks)
    rng = np.random.default_rng(0)
    params = {
        "lora_R": (0.05 * rng.standard_normal(d["shapes"]["lora_R"])).astype(np.float32),
        "head_weight": (0.1 * rng.standard_normal((2, d["hidden_size"]))).astype(np.float32),
        "head_bias": np.zeros(2, np.float32),
    }
    upper = split.trainable_layers
    runs = {
        "onnx full graph": full,
        "onnx split (upper only)": split,
        f"PyTorch train_blocks={train_blocks} (cached)": cached_torch,
    }
    rows = []
    for length in lengths:
        ids = rng.integers(1000, 20000, (batch, length))
        data = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
            "labels": np.arange(batch) % 2,
            "example_index": np.arange(batch) + 1000 * length,
        }
        start = time.perf_counter()
        split.loss_and_grads(data, params)  # the first step: the lower graph too, then cached
        first = time.perf_counter() - start
        grads = {name: backend.loss_and_grads(data, params)[1] for name, backend in runs.items()}  # warm-up
        timed: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleaved, so load changes hit every runtime alike
            for name, backend in runs.items():
                start = time.perf_counter()
                backend.loss_and_grads(data, params)
                timed.setdefault(name, []).append(time.perf_counter() - start)
        ms = {name: round(1000 * statistics.median(t), 1) for name, t in timed.items()}
        reference = grads["onnx full graph"]
        diff = {
            name: max(
                float(np.abs(g["lora_R"][upper] - reference["lora_R"][upper]).max()),
                float(np.abs(g["head_weight"] - reference["head_weight"]).max()),
            )
            for name, g in grads.items()
            if name != "onnx full graph"
        }
        names = list(runs)
        rows.append(
            {
                "batch": batch,
                "length": length,
                "train_blocks": train_blocks,
                "ms": ms,
                "split_first_step_ms": round(1000 * first, 1),
                "max_abs_diff_vs_full": diff,
                "split_over_full": round(ms[names[1]] / ms[names[0]], 3),
                "split_over_torch_cached": round(ms[names[1]] / ms[names[2]], 3),
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        print(
            f"split {batch}x{length}: {ms}, first split step {rows[-1]['split_first_step_ms']} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def accuracy_of(stdout: str) -> float:
    line = next(x for x in stdout.splitlines() if x.startswith("held-out accuracy after"))
    return float(line.split(":")[1].split()[0])


def folder_runs(model_dir: Path, folders: list[str], seeds: list[int], work: Path) -> list[dict]:
    from shared.artifacts.cache import user_cache_dir

    root = Path(os.environ.get("SMALL_FOLDERS", user_cache_dir() / "small_folders"))
    rows = []
    for name in folders:
        for seed in seeds:
            for runtime in ("torch", "onnx") if seed % 2 == 0 else ("onnx", "torch"):  # alternate: drift hits both
                data = work / f"{name}-{seed}-{runtime}"
                shutil.copytree(root / name, data, dirs_exist_ok=True)
                extra = ["--runtime", "onnx", "--model-dir", str(model_dir)] if runtime == "onnx" else []
                measured = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "client.run",
                        "--data",
                        str(data),
                        "--seed",
                        str(seed),
                        "--out",
                        str(work / f"{name}-{seed}-{runtime}.safetensors"),
                        *extra,
                    ]
                )
                rows.append(
                    {
                        "folder": name,
                        "seed": seed,
                        "runtime": runtime,
                        "accuracy": accuracy_of(measured["stdout"]),
                        "seconds": measured["seconds"],
                        "peak_rss_mib": measured["peak_rss_mib"],
                    }
                )
                print(f"folder {rows[-1]}", file=sys.stderr, flush=True)
    return rows


MESSAGE = """
import sys, numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.app import app
spec = __import__("json").loads(sys.argv[1])
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
arrays = ArrayRecord({"lora_R": Array(np.zeros(spec["shape"], np.float32)),
                      "classifier.weight": Array(np.zeros((2, spec["hidden"]), np.float32)),
                      "classifier.bias": Array(np.zeros(2, np.float32))})
msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "fingerprint": spec["fp"]})}),
              dst_node_id=7, message_type=MessageType.TRAIN)
msg.metadata.__dict__["_message_id"] = "m"
context = Context(run_id=1, node_id=7, node_config=spec["node"], state=RecordDict(), run_config=spec["run"])
reply = app(msg, context)
assert not reply.has_error(), reply.error
print("torch" in sys.modules)
"""


def message_runs(model_dir: Path, work: Path, repeats: int) -> list[dict]:
    from client.node_state import DiskState
    from client.onnx_training.folder import open_training_folder
    from shared.base_models import DEFAULT_MODEL, build_adapted_model
    from shared.federation.run_config import FederationConfig
    from shared.loraxs.config import LoraXSConfig

    folder = open_training_folder(model_dir)
    data = work / "node"
    data.mkdir(exist_ok=True)
    rows_text = [
        f'{{"text": "a {w} film number {i}", "label": "{label}"}}\n'
        for i, (w, label) in enumerate([("good", "pos"), ("dull", "neg")] * 10)
    ]
    (data / "train.jsonl").write_text("".join(rows_text[:16]))
    (data / "test.jsonl").write_text("".join(rows_text[16:]))
    _, basis = build_adapted_model(None, "seq-cls", LoraXSConfig(), labels=["neg", "pos"])
    DiskState(data).store_basis(basis, DEFAULT_MODEL)  # the torch node holds the factors, as after round 1
    run_config = FederationConfig(labels="neg,pos").to_run_config()
    spec = {
        "shape": folder.description["shapes"]["lora_R"],
        "hidden": folder.description["hidden_size"],
        "fp": folder.fingerprint,
        "run": run_config,
    }
    rows = []
    for _ in range(repeats):
        for runtime in ("torch", "onnx"):
            node = {"data-dir": str(data)} | (
                {"runtime": "onnx", "onnx-model-dir": str(model_dir)} if runtime == "onnx" else {}
            )
            measured = run_measured([sys.executable, "-c", MESSAGE, json.dumps(spec | {"node": node})])
            rows.append(
                {
                    "runtime": runtime,
                    "seconds": measured["seconds"],
                    "peak_rss_mib": measured["peak_rss_mib"],
                    "torch_imported": measured["stdout"].strip() == "True",
                }
            )
            print(f"message {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def site_packages_mib(root: Path) -> float:
    return round(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20, 1)


def install_sizes(work: Path) -> dict:
    import site

    venv = work / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    source = work / "source"
    for name in ("client", "deployment", "server", "shared", "simulations", "pyproject.toml", "README.md"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    subprocess.run([*pip, "--no-deps", str(source)], check=True, capture_output=True)
    subprocess.run(
        [*pip, "-r", str(source / "deployment" / "device-requirements.txt")], check=True, capture_output=True
    )
    device = site_packages_mib(next(venv.glob("lib/python*/site-packages")))
    full = site_packages_mib(Path(site.getsitepackages()[0]))
    return {"device_mib": device, "full_mib": full, "ratio": round(device / full, 3)}


def summary(document: dict) -> tuple[list[dict], str]:
    goals, lines = [], ["# Training through onnxruntime vs PyTorch", ""]
    if document.get("step"):
        lines += [
            "onnxruntime without a memory arena and without pre-packed weights (the default), graph "
            "optimizations basic or all; and all with the arena.",
            "",
            "| batch x length | PyTorch eager ms | ort basic ms | ort all ms | ort all + arena ms | all / eager | "
            "all + arena / eager | max abs grad diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in document["step"]:
            lines.append(
                f"| {r['batch']} x {r['length']} | {r['ms']['PyTorch eager']} | {r['ms']['onnxruntime (basic)']} | "
                f"{r['ms']['onnxruntime (all)']} | {r['ms']['onnxruntime (all, arena)']} | {r['ratio_all']} | "
                f"{r['ratio_arena']} | {r['max_abs_grad_diff']:.1e} |"
            )
        worst = max(r["ratio_all"] for r in document["step"])
        goals.append(
            goal(
                "step time onnxruntime <= 0.6x PyTorch eager",
                f"{worst}x at worst",
                worst <= 0.6,
                "the exported graph's backward is aten-decomposed; see the table",
            )
        )
        lines.append("")
    if document.get("split"):
        rows = document["split"]
        names = list(rows[0]["ms"])
        lines += [
            f"One step when the top {rows[0]['train_blocks']} blocks train (median ms; the split's hidden states "
            "cached, its first step apart; gradients of the top R and head against the full graph).",
            "",
            f"| batch x length | {' | '.join(names)} | split first step | split / full | split / PyTorch cached | "
            "max abs diff (split, PyTorch) |",
            "|---" * (len(names) + 5) + "|",
        ]
        for r in rows:
            diffs = ", ".join(f"{v:.1e}" for v in r["max_abs_diff_vs_full"].values())
            lines.append(
                f"| {r['batch']} x {r['length']} | {' | '.join(str(r['ms'][n]) for n in names)} | "
                f"{r['split_first_step_ms']} | {r['split_over_full']} | {r['split_over_torch_cached']} | {diffs} |"
            )
        lines.append("")
    if document.get("folders"):
        lines += [
            "`client.run --data DIR` with the defaults, each runtime in a fresh process, alternating; accuracy "
            "is the mean over seeds (every seed's in the JSON), seconds the mean wall time of the whole process, "
            "RSS the largest peak.",
            "",
            "| folder | seeds | PyTorch accuracy | onnx accuracy | PyTorch s | onnx s | onnx / PyTorch time | "
            "PyTorch peak RSS MiB | onnx peak RSS MiB | RSS ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        gaps, rss_ratios = {}, {}
        for name in dict.fromkeys(r["folder"] for r in document["folders"]):
            by = {
                rt: [r for r in document["folders"] if r["folder"] == name and r["runtime"] == rt]
                for rt in ("torch", "onnx")
            }
            if not (by["torch"] and by["onnx"]):
                continue
            acc = {rt: statistics.mean(r["accuracy"] for r in rows) for rt, rows in by.items()}
            sec = {rt: statistics.mean(r["seconds"] for r in rows) for rt, rows in by.items()}
            rss = {rt: max(r["peak_rss_mib"] for r in rows) for rt, rows in by.items()}
            gaps[name], rss_ratios[name] = acc["onnx"] - acc["torch"], rss["onnx"] / rss["torch"]
            lines.append(
                f"| {name} | {len(by['onnx'])} | {acc['torch']:.4f} | {acc['onnx']:.4f} | {sec['torch']:.1f} | "
                f"{sec['onnx']:.1f} | {sec['onnx'] / sec['torch']:.2f} | {rss['torch']:.0f} | {rss['onnx']:.0f} | "
                f"{rss_ratios[name]:.2f} |"
            )
        if gaps:
            worst = min(gaps, key=gaps.get)
            goals.append(
                goal(
                    "accuracy within 1 point of the PyTorch path (seeded means, every folder)",
                    f"worst {100 * gaps[worst]:+.1f} points ({worst})",
                    gaps[worst] >= -0.01 - 1e-9,
                    "see the table",
                )
            )
            top = max(rss_ratios, key=rss_ratios.get)
            goals.append(
                goal(
                    "peak RSS <= 1/2 of the PyTorch path",
                    f"at most {rss_ratios[top]:.2f}x ({top})",
                    rss_ratios[top] <= 0.5,
                    "see the table",
                )
            )
        lines.append("")
    if document.get("message"):
        med = {
            rt: {
                k: statistics.median(r[k] for r in document["message"] if r["runtime"] == rt)
                for k in ("seconds", "peak_rss_mib")
            }
            for rt in ("torch", "onnx")
        }
        lines += ["| training message | seconds (median) | peak RSS MiB (median) |", "|---|---|---|"]
        lines += [f"| {rt} node | {med[rt]['seconds']} | {med[rt]['peak_rss_mib']} |" for rt in ("torch", "onnx")]
        for key, what in (("seconds", "start-up seconds"), ("peak_rss_mib", "peak RSS")):
            ratio = med["onnx"][key] / med["torch"][key]
            goals.append(
                goal(
                    f"a training message's {what} <= 1/3 of a torch node's",
                    f"{ratio:.2f}x",
                    ratio <= 1 / 3,
                    "see the table",
                )
            )
        lines.append("")
    if document.get("size"):
        s = document["size"]
        lines += [
            f"Device install: {s['device_mib']} MiB of site-packages against {s['full_mib']} MiB for the full "
            f"install ({s['ratio']}x).",
            "",
        ]
    lines += goal_lines(goals) + ["", footer(document), ""]
    return goals, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_training", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="MiniLM training artifacts (default: exported into a temporary folder)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-blocks", type=int, default=2, help="the split part: top blocks that train")
    parser.add_argument("--folders", nargs="+", default=["debates"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="onnx_training", help="result file stem (one run per set of --parts)")
    args = parser.parse_args(argv)
    document = {"command": command_line("benchmarks.onnx_training", argv), "machine": machine_now()}
    with tempfile.TemporaryDirectory(prefix="onnx-training-") as tmp:
        work = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else work / "artifacts"
        if not args.model_dir:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "client.export",
                    "--training",
                    str(model_dir),
                    "--train-blocks",
                    str(args.train_blocks),
                ],
                cwd=REPO,
                check=True,
            )
        if "message" in args.parts:  # the quick parts first
            document["message"] = message_runs(model_dir, work, max(1, min(args.repeats, 3)))
        if "size" in args.parts:
            document["size"] = install_sizes(work)
        if "step" in args.parts:
            document["step"] = step_times(model_dir, args.lengths, args.batch, args.repeats)
        if "split" in args.parts:
            document["split"] = split_step_times(model_dir, args.lengths, args.batch, args.repeats, args.train_blocks)
        if "folders" in args.parts:
            document["folders"] = folder_runs(model_dir, args.folders, args.seeds, work)
    document["goals"], markdown = summary(document)
    write_result(args.out, args.name, document, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
