"""The personal model's parts (encoder, lexical part, temperature) on the small real folders: the goals.

    python -m benchmarks.personal_parts --runs RUN.json [RUN.json ...] [--reuse OLD.json ...]
        [--joint JOINT.json] [--out DIR]

Reads what `python -m benchmarks.small_data` wrote (its loraxs rows carry the parts: the encoder
alone, the lexical share kept, the temperature, test NLL / ECE before and after it, the bytes the
parts add, and with --int8 the ONNX fp32 / int8 accuracy) and judges, per folder:
- accuracy of `client.run` >= the best of TF-IDF + LR, frozen + LR and LoRA r=8, minus 1 point
  (and strictly above it on most folders);
- test ECE (15 bins) <= 0.05, and test NLL after the temperature never above before it (every seed);
- int8 export within 1 point of fp32 accuracy, lexical part included.
Rows of methods a run did not measure may come from --reuse files (earlier small_data runs on the
same folders and splits); the table says which file and date each such row comes from. --joint:
a small_data run with --joint-lexical, shown next to the default (the lexical part chosen after
training), seed by seed.
Writes personal_parts.json and personal_parts.md through benchmarks/result_files.py.
"""

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.result_files import RESULTS, command_line, footer, goal, goal_lines, machine_now, write_result

BASELINES = ("tfidf", "frozen", "lora")
MARGIN = 0.01
ECE_LIMIT = 0.05
SAME = 1e-9


def load_rows(runs: list[Path], reuse: list[Path]) -> dict[str, dict]:
    """folder -> {"methods": {method: row}, "source": {method: where}, "train", "test", "labels"}."""
    folders: dict[str, dict] = {}
    for path, reused in [(p, False) for p in runs] + [(p, True) for p in reuse]:
        report = json.loads(path.read_text())
        for name, entry in report["folders"].items():
            target = folders.setdefault(
                name,
                {
                    "methods": {},
                    "source": {},
                    "train": entry["train"],
                    "test": entry["test"],
                    "labels": entry["labels"],
                },
            )
            for method, row in entry["methods"].items():
                if method in target["methods"] or (reused and method == "loraxs"):
                    continue
                target["methods"][method] = row
                target["source"][method] = f"{path.name} ({report['date'][:10]})" if reused else "this run"
    return folders


def runs_of(row: dict) -> list[dict]:
    return row.get("runs", [row])


def folder_summary(name: str, entry: dict) -> dict | None:
    rows = entry["methods"]
    if "loraxs" not in rows:
        return None
    ours, runs = rows["loraxs"]["accuracy"], runs_of(rows["loraxs"])
    baselines = {m: rows[m]["accuracy"] for m in BASELINES if m in rows}
    best = max(baselines.values()) if baselines else None
    calibrated = [r["calibration"] for r in runs if r.get("calibration")]
    onnx = [r["onnx_accuracy"] for r in runs if r.get("onnx_accuracy")]
    return {
        "folder": name,
        "accuracy": ours,
        "accuracies": [r["accuracy"] for r in runs],
        "encoder_accuracy": statistics.fmean(r.get("encoder_accuracy", r["accuracy"]) for r in runs),
        "lexical_kept": sum(1 for r in runs if r.get("lexical_mix")),
        "seeds": len(runs),
        "lexical_mix": [r.get("lexical_mix", 0.0) for r in runs],
        "baselines": baselines,
        "baseline_sources": {m: entry["source"][m] for m in baselines},
        "best_baseline": best,
        "gap": ours - best if best is not None else None,
        "temperature": [c["temperature"] for c in calibrated],
        "nll": [(c["nll_before"], c["nll_after"]) for c in calibrated],
        "ece": [(c["ece_before"], c["ece_after"]) for c in calibrated],
        "ece_floor": [c["ece_floor"] for c in calibrated if "ece_floor" in c],
        "int8": onnx[0] if onnx else None,
        "parts_bytes": max((r.get("parts_bytes", 0) for r in runs), default=0),
        "encoder_bytes": max((r.get("encoder_bytes", 0) for r in runs), default=0),
        "terms": max((r.get("lexical_terms", r.get("lexical_wordpieces", 0)) for r in runs), default=0),
    }


def joint_accuracies(path: Path) -> dict[str, list[float]]:
    """folder -> the --joint-lexical run's test accuracy per seed."""
    report = json.loads(path.read_text())
    return {
        name: [r["accuracy"] for r in runs_of(entry["methods"]["loraxs"])]
        for name, entry in report["folders"].items()
        if "loraxs" in entry["methods"]
    }


def mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


def goals(summaries: list[dict]) -> list[dict]:
    judged = [s for s in summaries if s["gap"] is not None]
    within = [s["folder"] for s in judged if s["gap"] >= -MARGIN - SAME]
    above = [s["folder"] for s in judged if s["gap"] > SAME]
    ece_ok = [s["folder"] for s in summaries if s["ece"] and mean([e[1] for e in s["ece"]]) <= ECE_LIMIT]
    nll_ok = [s["folder"] for s in summaries if s["nll"] and all(a <= b + 1e-12 for b, a in s["nll"])]
    int8 = [s for s in summaries if s["int8"]]
    int8_ok = [s["folder"] for s in int8 if abs(s["int8"]["int8"] - s["int8"]["fp32"]) <= MARGIN + SAME]
    missed = lambda ok, among: ", ".join(s["folder"] for s in among if s["folder"] not in ok)
    return [
        goal(
            "accuracy >= best of TF-IDF + LR, frozen + LR, LoRA r=8 minus 1 point, every folder",
            f"{len(within)} of {len(judged)} folders",
            len(within) == len(judged),
            f"not: {missed(within, judged)}",
        ),
        goal(
            "accuracy strictly above that best on most folders",
            f"{len(above)} of {len(judged)} folders",
            len(above) > len(judged) / 2,
            f"above only on: {', '.join(above) or 'none'}",
        ),
        goal(
            f"test ECE (15 bins, mean over seeds) <= {ECE_LIMIT}, every folder",
            f"{len(ece_ok)} of {len(summaries)} folders",
            len(ece_ok) == len(summaries),
            f"not: {missed(ece_ok, summaries)}",
        ),
        goal(
            "test NLL after the temperature never above before it (every seed)",
            f"{len(nll_ok)} of {len(summaries)} folders",
            len(nll_ok) == len(summaries),
            f"not: {missed(nll_ok, summaries)}",
        ),
        goal(
            "int8 export within 1 point of fp32 with the lexical part (first seed)",
            f"{len(int8_ok)} of {len(int8)} folders",
            len(int8_ok) == len(int8),
            f"not: {missed(int8_ok, int8)}",
        ),
    ]


def markdown(document: dict) -> str:
    lines = [
        "# The personal model's parts on small real folders\n",
        "`client.run` defaults (LoRA-XS encoder + lexical part + temperature) against what a user could do "
        "without it; accuracy is the mean over seeds (lowest–highest). *encoder* = the same run without its "
        "lexical part; *lexical* = seeds where it was kept (its share w of the pooled calibrated logits per seed).\n",
        "| folder | client.run | encoder alone | lexical kept (w) | TF-IDF + LR | frozen + LR | LoRA r=8 | vs best |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s in document["folders"]:
        b = s["baselines"]
        cell = lambda m: f"{b[m]:.3f}" + ("*" if s["baseline_sources"][m] != "this run" else "") if m in b else "—"
        lines.append(
            f"| {s['folder']} | {s['accuracy']:.3f} ({min(s['accuracies']):.3f}–{max(s['accuracies']):.3f}) | "
            f"{s['encoder_accuracy']:.3f} | {s['lexical_kept']}/{s['seeds']} "
            f"({', '.join(f'{m:g}' for m in s['lexical_mix'])}) | {cell('tfidf')} | {cell('frozen')} | "
            f"{cell('lora')} | {100 * s['gap'] + 0.0:+.1f} pts |"
        )
    reused = sorted(
        {f"{m}: {src}" for s in document["folders"] for m, src in s["baseline_sources"].items() if src != "this run"}
    )
    if reused:
        lines += ["", "\\* from an earlier run on the same folders and test splits: " + "; ".join(reused)]
    lines += [
        "",
        "*ECE floor*: the ECE a perfectly calibrated model with the same confidences shows on this many "
        "test texts (`shared/calibration.py:sampling_floor`, mean over seeds): the binned estimate's own noise.",
        "",
        "| folder | temperature | test NLL before → after | test ECE before → after | ECE floor | int8 − fp32 | "
        "parts bytes (terms: wordpieces + pairs) | adapter bytes without |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    for s in document["folders"]:
        nll = f"{mean([n[0] for n in s['nll']]):.3f} → {mean([n[1] for n in s['nll']]):.3f}"
        ece = f"{mean([e[0] for e in s['ece']]):.3f} → {mean([e[1] for e in s['ece']]):.3f} (max {max(e[1] for e in s['ece']):.3f})"
        int8 = f"{100 * (s['int8']['int8'] - s['int8']['fp32']) + 0.0:+.1f} pts" if s["int8"] else "—"
        temps = ", ".join(f"{t:.2f}" for t in s["temperature"])
        floor = f"{mean(s['ece_floor']):.3f}" if s.get("ece_floor") else "—"
        lines.append(
            f"| {s['folder']} | {temps} | {nll} | {ece} | {floor} | {int8} | {s['parts_bytes']:,} ({s['terms']}) | "
            f"{s['encoder_bytes']:,} |"
        )
    if document.get("joint"):
        lines += [
            "",
            "`--joint-lexical` (the lexical part chosen before training, R and the head trained around it) "
            "against the default (chosen after training), same seeds:",
            "",
            "| folder | default | joint | joint − default | seeds where joint is higher / lower |",
            "|---|---:|---:|---:|---|",
        ]
        for s in document["folders"]:
            joint = document["joint"].get(s["folder"])
            if joint:
                pairs = list(zip(joint, s["accuracies"]))
                higher, lower = sum(j > d + SAME for j, d in pairs), sum(j < d - SAME for j, d in pairs)
                lines.append(
                    f"| {s['folder']} | {s['accuracy']:.3f} | {mean(joint):.3f} | "
                    f"{100 * (mean(joint) - s['accuracy']) + 0.0:+.1f} pts | {higher} / {lower} of {len(pairs)} |"
                )
    lines += ["", "Goals:", *goal_lines(document["goals"]), "", "Runs:"]
    lines += [
        f"- `{r['command']}` (load {r['load_before']}){': ' + r['note'] if r.get('note') else ''}"
        for r in document["runs"]
    ]
    lines += ["", footer(document)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="small_data JSON files of this measurement")
    parser.add_argument(
        "--reuse", nargs="*", type=Path, default=[], help="earlier small_data JSON files for missing rows"
    )
    parser.add_argument("--joint", type=Path, help="a small_data JSON of client.run --joint-lexical")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folders = load_rows(args.runs, args.reuse)
    summaries = [s for name, entry in folders.items() if (s := folder_summary(name, entry))]
    document = {
        "command": command_line("benchmarks.personal_parts", argv),
        "machine": machine_now(),
        "runs": [
            {
                "file": p.name,
                "command": json.loads(p.read_text())["command"],
                "load_before": json.loads(p.read_text()).get("load_before"),
                "note": json.loads(p.read_text()).get("note", ""),
            }
            for p in [*args.runs, *([args.joint] if args.joint else [])]
        ],
        "folders": summaries,
        "goals": goals(summaries),
        "joint": joint_accuracies(args.joint) if args.joint else {},
    }
    write_result(args.out, "personal_parts", document, markdown(document))
    print(markdown(document))


if __name__ == "__main__":
    main()
