"""What costs a trained adapter's accuracy under int8: onnxruntime quantization recipes side by side.

    python -m benchmarks.studies.int8_recipes [--folders rotten debates debian convention] [--work DIR] [--no-latency] [--out DIR]

Each folder gets a properly trained adapter (as `benchmarks.export`: the `client.run` recipe,
reused from --work when there), its merged fp32 export, then every recipe below quantizes that
one fp32 file (exported with EXPORT_ATTENTION), except the rows of the sdpa-attention graph (what
the export wrote before), exported apart. Per recipe: accuracy on the folder's test split,
agreement of its predicted class with fp32's, max abs difference of the logits from fp32, file
size, and onnxruntime latency at batch 1 and 32 x sequence 64 (medians). Writes <out>/int8_recipes.{json,md}
(default benchmarks/studies/results/).
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from benchmarks.export import FOLDERS, adapter_for, prepare_folder
from benchmarks.result_files import STUDY_RESULTS, command_line, footer, machine_now, write_result
from client.onnx.graph import EXPORT_ATTENTION, LogitsGraph, export_graph, file_size, quantize_int8
from client.onnx.job import EVAL_BATCH_SIZE, ExportConfig, run_export
from client.onnx.verify import LATENCY_LENGTH, median_ms, ort_session
from shared.artifacts.open_adapter import open_adapter, read_adapter
from shared.base_models import DEFAULT_MODEL, load_tokenizer
from shared.data.batches import make_loader
from shared.data.local_folder import load_local_folder
from shared.loraxs.model import merged_model

TOKEN_NAMES = ["input_ids", "attention_mask", "token_type_ids"]  # MiniLM (BERT)


def sdpa_export(adapter: Path, folder: Path, target: Path) -> Path:
    """The merged fp32 graph with Hugging Face's sdpa attention (a Where + IsNaN per layer)."""
    model = open_adapter(read_adapter(adapter), data_dir=folder).model
    export_graph(LogitsGraph(merged_model(model), "seq-cls", TOKEN_NAMES), {}, target, None, False, attention="sdpa")
    return target


def recipes(fp32: Path, fp32_sdpa: Path) -> dict:
    """name -> function(target path) writing that model from `fp32` (or `fp32_sdpa`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32), load_external_data=False).graph
    ffn_out = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0].startswith("gelu")]

    def dynamic(**options):
        return lambda target: quantize_dynamic(fp32, target, weight_type=QuantType.QInt8, **options)

    return {
        "dynamic, all ops, per-tensor (the old default)": dynamic(),
        "dynamic, all ops, per-channel": dynamic(per_channel=True),
        "dynamic, embeddings (Gather) only": dynamic(op_types_to_quantize=["Gather"]),
        "dynamic, MatMul only, per-tensor": dynamic(op_types_to_quantize=["MatMul"]),
        "dynamic, MatMul only, per-channel (the default)": lambda target: quantize_int8(fp32, target, False),
        "dynamic, MatMul only, per-channel, FFN output layers fp32": dynamic(
            op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_exclude=ffn_out
        ),
        "sdpa-attention graph, fp32 (the export before)": lambda target: shutil.copyfile(fp32_sdpa, target),
        "sdpa-attention graph, dynamic, MatMul only, per-channel (the default before)": lambda target: quantize_int8(
            fp32_sdpa, target, False
        ),
    }


def evaluate(session, batches, reference=None) -> dict:
    logits = [session.run(["logits"], feed)[0] for feed, _ in batches]  # each (B, C)
    labels = np.concatenate([y for _, y in batches])
    predicted = np.concatenate([x.argmax(-1) for x in logits])
    result = {"accuracy": float((predicted == labels).mean()), "logits": logits, "predicted": predicted}
    if reference is not None:
        result["agreement_with_fp32"] = float((predicted == reference["predicted"]).mean())
        result["max_abs_diff_vs_fp32"] = float(max(np.abs(a - b).max() for a, b in zip(logits, reference["logits"])))
    return result


def latency(session, tokenizer, repeats: int) -> dict:
    out = {}
    for batch in (1, 32):
        text = " ".join(["A slow, thoughtful story about two brothers who inherit a failing farm."] * 8)
        feed = dict(
            tokenizer(
                [text] * batch, max_length=LATENCY_LENGTH, truncation=True, padding="max_length", return_tensors="np"
            )
        )
        feed = {n: feed[n].astype(np.int64) for n in TOKEN_NAMES}
        out[f"batch {batch}"] = round(
            median_ms(lambda: session.run(["logits"], feed), repeats if batch == 1 else max(repeats // 3, 3)), 2
        )
    return out


def one_folder(name: str, folder: Path, args, tmp: Path) -> dict:
    adapter, kind, _ = adapter_for(name, folder, args)
    fp32 = tmp / name / "model.onnx"
    run_export(ExportConfig(adapter=adapter, out=fp32, data_dir=folder))
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    splits = load_local_folder(folder, "seq-cls")
    batches = [
        ({n: b[n].numpy() for n in TOKEN_NAMES}, b["labels"].numpy())
        for b in make_loader(splits.test, tokenizer, "seq-cls", EVAL_BATCH_SIZE, LATENCY_LENGTH)
    ]
    threads = args.threads
    reference = evaluate(ort_session(fp32, threads), batches)
    rows = {
        "fp32 (no quantization)": {
            "accuracy": reference["accuracy"],
            "agreement_with_fp32": 1.0,
            "max_abs_diff_vs_fp32": 0.0,
            "bytes": file_size(fp32),
        }
    }
    if args.latency:
        rows["fp32 (no quantization)"]["latency_ms"] = latency(ort_session(fp32, threads), tokenizer, args.repeats)
    fp32_sdpa = sdpa_export(adapter, folder, tmp / name / "model.sdpa.onnx")
    for recipe, write in recipes(fp32, fp32_sdpa).items():
        target = tmp / name / f"int8-{len(rows)}.onnx"
        write(target)
        session = ort_session(target, threads)
        res = evaluate(session, batches, reference)
        rows[recipe] = {k: v for k, v in res.items() if k not in ("logits", "predicted")}
        rows[recipe]["bytes"] = file_size(target)
        if args.latency:
            rows[recipe]["latency_ms"] = latency(session, tokenizer, args.repeats)
        print(name, recipe, json.dumps({k: v for k, v in rows[recipe].items()}), flush=True)
    return {"adapter": kind, "test_examples": len(splits.test), "labels": list(splits.labels), "recipes": rows}


def markdown(document: dict) -> str:
    per_folder, config = document["results"], document
    names = list(next(iter(per_folder.values()))["recipes"])
    lines = [
        "# int8 recipes on properly trained adapters (MiniLM, rank 16)",
        "",
        f"onnxruntime {config['onnxruntime']} with "
        f"{config['threads']} threads; latency batch 1 / 32 x sequence {LATENCY_LENGTH}, medians. Every recipe quantizes the merged fp32 export (its attention exported "
        f"as {EXPORT_ATTENTION!r}), except the sdpa-attention rows: the graph the export wrote before, exported "
        "apart. Accuracy / agreement with fp32's predicted class / max abs logit difference from that folder's "
        "fp32 export, per folder (test texts):",
        "",
        "| recipe | "
        + " | ".join(f"{f} ({r['test_examples']})" for f, r in per_folder.items())
        + " | size | latency b1 / b32 (ms, first folder) |",
        "|---|" + "---:|" * (len(per_folder) + 2),
    ]
    for recipe in names:
        cells = []
        for res in per_folder.values():
            row = res["recipes"][recipe]
            cells.append(
                f"{row['accuracy']:.3f} / {row['agreement_with_fp32']:.3f} / {row['max_abs_diff_vs_fp32']:.2f}"
            )
        first = next(iter(per_folder.values()))["recipes"][recipe]
        lat = first.get("latency_ms")
        lines.append(
            f"| {recipe} | "
            + " | ".join(cells)
            + f" | {first['bytes'] / 2**20:.1f} MiB | "
            + (f"{lat['batch 1']:.2f} / {lat['batch 32']:.1f}" if lat else "not measured")
            + " |"
        )
    return "\n".join([*lines, "", footer(document)]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", choices=FOLDERS, default=list(FOLDERS))
    parser.add_argument("--work", type=Path, help="keep the folders and adapters here (reused when present)")
    parser.add_argument("--no-latency", dest="latency", action="store_false", help="accuracy only")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=STUDY_RESULTS, help="results folder")
    args = parser.parse_args(argv)
    args.train, args.test, args.seed = 1000, 500, 0  # what benchmarks.export's folders use
    machine = machine_now()
    per_folder = {}
    with tempfile.TemporaryDirectory(prefix="int8-recipes-") as tmp:
        for name in args.folders:
            folder = (args.work or Path(tmp)) / name
            prepare_folder(name, folder, args)
            per_folder[name] = one_folder(name, folder, args, Path(tmp))
    import onnxruntime

    document = {
        "command": command_line("benchmarks.studies.int8_recipes", argv),
        "machine": machine,
        "threads": args.threads,
        "onnxruntime": onnxruntime.__version__,
        "results": per_folder,
    }
    write_result(args.out, "int8_recipes", document, markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
