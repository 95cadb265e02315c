"""Start-up time and peak memory of `python -m client.predict` (onnxruntime + tokenizers) against
the PyTorch path (the adapter opened as `client.run` opens it, transformers tokenizer, one forward).

    python -m benchmarks.predict_startup                              # a seeded random adapter
    python -m benchmarks.predict_startup --adapter A.safetensors --data DIR   # a trained one

Exports the adapter once (`run_export` with --quantize int8 --onnx-adapter), then runs each path
in a fresh process, alternating, `--runs` times, on the same texts: wall time from spawn to exit
and the process's peak RSS (`wait4` rusage), medians. Each process prints its labels; the paths
must agree on them. Writes <out>/predict_startup.{json,md} (default benchmarks/results/).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.result_files import REPO, RESULTS, command_line, footer, machine_now, write_result

TEXTS = ["a quiet and lovely film", "dull, long and pointless", "the actors hold a thin plot together"]

TORCH_PATH = """
import sys, torch
from pathlib import Path
from shared.artifacts.open_adapter import open_adapter, read_adapter
from shared.base_models import load_tokenizer
adapter_path, data = Path(sys.argv[1]), sys.argv[2] or None
adapter = read_adapter(adapter_path)
opened = open_adapter(adapter, data_dir=Path(data) if data else None)
tokenizer = load_tokenizer(adapter.meta.base_model)
batch = tokenizer(sys.argv[3:], padding=True, truncation=True, max_length=64, return_tensors="pt")
with torch.no_grad():
    probs = opened.model.eval()(**batch).logits.softmax(-1)
for text, p in zip(sys.argv[3:], probs):
    print(f"{opened.labels[int(p.argmax())]}\\t{float(p.max()):.4f}\\t{text}")
"""


# A fresh, small Python forks and execs the command and reports the child's rusage: a child forked
# straight from this process would inherit this process's peak RSS (torch, the export) as its own.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"LAUNCHER {os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}", file=sys.stderr)
"""


def run_child(argv: list[str]) -> dict:
    """-> wall seconds, peak RSS (MiB) and stdout of one fresh process running `argv`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    report = [line for line in done.stderr.splitlines() if line.startswith("LAUNCHER ")]
    code, max_rss_kib = map(int, report[-1].split()[1:]) if report else (done.returncode, 0)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[1:5])} ... exited {code}: {done.stderr.strip()[-300:]}")
    return {"seconds": seconds, "peak_rss_mib": max_rss_kib / 1024, "stdout": done.stdout}


def labels_of(stdout: str) -> list[str]:
    return [line.split("\t")[0] for line in stdout.splitlines() if "\t" in line]


def export_folder(adapter: Path, data: Path | None, folder: Path) -> None:
    from client.onnx.job import ExportConfig, run_export

    run_export(
        ExportConfig(adapter=adapter, out=folder / "model.onnx", data_dir=data, quantize="int8", onnx_adapter=True)
    )


def random_adapter(folder: Path) -> tuple[Path, Path]:
    """A seeded random adapter (benchmarks/export.py) and a data folder whose cache holds its factors."""
    from benchmarks.export import random_adapter as make
    from benchmarks.export import write_data_folder

    data = folder / "data"
    data.mkdir()
    write_data_folder(data, 8, 8, 0)
    make(data, folder / "personal.safetensors", 0)
    return folder / "personal.safetensors", data


def markdown(document: dict) -> str:
    results, config = document["results"], document
    rows = results["paths"]
    torch_row = rows["PyTorch (open_adapter + transformers)"]
    lines = [
        "# `client.predict` start-up: onnxruntime + tokenizers vs PyTorch",
        "",
        f"{config['adapter']}; {len(TEXTS)} texts per process, fresh process each, median of "
        f"{config['runs']} runs, paths alternating.",
        "",
        "| path | wall time to labels (s) | vs PyTorch | peak RSS (MiB) | vs PyTorch |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {r['seconds']:.2f} | {r['seconds'] / torch_row['seconds']:.2f}x | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / torch_row['peak_rss_mib']:.2f}x |"
            for name, r in rows.items()
        ],
        "",
        f"Labels agree across the paths: {results['labels_agree']}.",
        "",
        footer(document),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a trained adapter (default: a seeded random one)")
    parser.add_argument("--data", type=Path, help="the adapter's data folder (its .loraxs cache holds the factors)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    machine = machine_now()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        adapter, data = (args.adapter, args.data) if args.adapter else random_adapter(tmp)
        folder = tmp / "export"
        export_folder(adapter, data, folder)
        onnx_adapter = folder / (adapter.stem + ".onnx_adapter")
        paths = {
            "client.predict, merged fp32": [python, "-m", "client.predict", "--model-dir", str(folder), *TEXTS],
            "client.predict, merged int8": [
                python,
                "-m",
                "client.predict",
                "--model-dir",
                str(folder),
                "--int8",
                *TEXTS,
            ],
            "client.predict, base + .onnx_adapter": [
                python,
                "-m",
                "client.predict",
                "--model-dir",
                str(folder),
                "--adapter",
                str(onnx_adapter),
                *TEXTS,
            ],
            "PyTorch (open_adapter + transformers)": [python, "-c", TORCH_PATH, str(adapter), str(data or ""), *TEXTS],
        }
        measured = {name: [] for name in paths}
        for _ in range(args.runs):
            for name, command in paths.items():
                measured[name].append(run_child(command))
    labels = {name: labels_of(runs[0]["stdout"]) for name, runs in measured.items()}
    exact = [labels[n] for n in labels if "int8" not in n]  # int8 may differ on a borderline text
    results = {
        "paths": {
            name: {
                "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
                "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in runs), 1),
                "labels": labels[name],
            }
            for name, runs in measured.items()
        },
        "labels_agree": all(lab == exact[0] for lab in exact),
    }
    document = {
        "command": command_line("benchmarks.predict_startup", argv),
        "machine": machine,
        "adapter": f"adapter {args.adapter.name}" if args.adapter else "a seeded random MiniLM adapter (rank 16)",
        "runs": args.runs,
        "results": results,
    }
    write_result(args.out, "predict_startup", document, markdown(document))
    print(markdown(document))
    return 0 if results["labels_agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
