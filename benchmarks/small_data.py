"""`client.run` on small real folders, side by side with what a user could do without us.

    python -m benchmarks.small_data [--folders debates debian convention manpages docstrings hamlet] [--methods ...]

Per folder (built by `benchmarks/small_folders.py`; none is rotten-tomatoes; defaults are tuned on
debates and debian only, the others are held out), same train/test
split, same packaged MiniLM, same validation split, token length and epoch budget for every
fine-tuned method:
- loraxs:   `client.run --data DIR` with its defaults (the `personalize` function it calls)
- lora:     PEFT LoRA r=8 on the same modules, same recipe (closed-form head start, early stopping on
            the recipe's validation measure)
- full:     full fine-tuning, same recipe
- frozen:   frozen mean-pooled embeddings + logistic regression (L2 chosen on validation)
- tfidf:    TF-IDF 1-2-grams + logistic regression (C chosen on validation)
Writes benchmarks/results/small_data.json and small_data.md (accuracy, training seconds, bytes).

Time to accuracy (wall seconds, peak RSS, steps, accuracy at 30 / 60 / 120 s of `--time-budget`,
the compute floor) of today's recipe and this checkout's, side by side, each run in a fresh
process: `python -m benchmarks.small_data --speed [small_data_speed's flags]`
(`benchmarks/small_data_speed.py`).
"""

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save

from benchmarks.result_files import RESULTS, command_line, goal, load_result, machine_now, write_result
from benchmarks.small_folders import TUNING, build_folders
from client.personalization import PersonalizationConfig, personalize
from shared.artifacts.cache import user_cache_dir
from shared.base_models import DEFAULT_MODEL, load_base_model, load_tokenizer
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.data.local_folder import load_local_folder
from shared.linear_probe import fit_linear_head, head_inputs, refit_on_both, set_head
from shared.loraxs.config import BERT_TARGETS
from shared.personal_training import (
    PersonalTrainingConfig,
    choose_max_length,
    epoch_budget,
    split_validation,
    validation_score,
)
from shared.training import TrainConfig, evaluate, train

METHODS = ("loraxs", "lora", "full", "frozen", "tfidf")
RUN_ORDER = ("tfidf", "frozen", "loraxs", "lora", "full")  # a report cut short still has the goals' rows
BASELINE_LR = {"lora": 5e-4, "full": 5e-5}
TFIDF_C = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SAME = 1e-9  # accuracy gaps this small are ties (means over seeds are sums of floats)


class Split:
    """The recipe's split and length, shared by every method on one folder."""

    def __init__(self, folder: Path, recipe: PersonalTrainingConfig, tokenizer):
        self.splits = load_local_folder(folder, seed=recipe.seed)
        self.fit, self.val = split_validation(self.splits.train, recipe.val_fraction, recipe.seed, stratify=True)
        self.max_length = choose_max_length(self.fit["text"], tokenizer, recipe)
        self.num_labels = len(self.splits.labels)
        self.tokenizer = tokenizer

    def loader(self, ds, shuffle=False, batch_size=EVAL_BATCH_SIZE, seed=0):
        return make_loader(ds, self.tokenizer, "seq-cls", batch_size, self.max_length, shuffle=shuffle, seed=seed)


def frozen_head(split: Split, seed: int):
    """Frozen base model + logistic regression (fit, L2 on validation, refit on fit + val)."""
    model = load_base_model(DEFAULT_MODEL, "seq-cls", split.num_labels, seed)
    fit, val = head_inputs(model, split.loader(split.fit)), head_inputs(model, split.loader(split.val))
    head, _ = fit_linear_head(fit, val, split.num_labels)
    head = refit_on_both(fit, val, split.num_labels, head.l2)
    return model, head


def run_frozen(split: Split, recipe: PersonalTrainingConfig) -> dict:
    start = time.perf_counter()
    model, head = frozen_head(split, recipe.seed)
    set_head(model, head)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, split.loader(split.splits.test)).accuracy
    return {"accuracy": accuracy, "train_seconds": seconds, "bytes": len(save({"w": head.weight, "b": head.bias}))}


def run_finetune(method: str, split: Split, recipe: PersonalTrainingConfig) -> dict:
    """LoRA r=8 (peft) or full fine-tuning with the recipe's split, start, budget and selection."""
    model, head = frozen_head(split, recipe.seed)
    set_head(model, head)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=list(BERT_TARGETS), lora_dropout=0.0, modules_to_save=["classifier"]
        )
        model = get_peft_model(model, config)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    trainable = lambda: {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    val_loader = split.loader(split.val)

    best = {"score": validation_score(model, val_loader, "cpu", recipe.select_on), "state": trainable()}
    waited = [0]

    def after_epoch(_step: int) -> bool:
        score = validation_score(model, val_loader, "cpu", recipe.select_on)
        if score > best["score"]:
            best.update(score=score, state=trainable())
            waited[0] = 0
        else:
            waited[0] += 1
        return waited[0] >= recipe.patience

    train_loader = split.loader(split.fit, shuffle=True, batch_size=recipe.batch_size, seed=recipe.seed)
    lr = BASELINE_LR[method]
    config = TrainConfig(epochs=epoch_budget(len(train_loader), recipe), lr=lr, head_lr=lr)
    torch.manual_seed(recipe.seed)
    result = train(model, train_loader, config, progress=True, desc=method, after_epoch=after_epoch)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in best["state"].items():
            params[name].copy_(value)
    accuracy = evaluate(model, split.loader(split.splits.test)).accuracy
    return {"accuracy": accuracy, "train_seconds": result.seconds, "bytes": len(save(best["state"]))}


def run_loraxs(folder: Path, recipe: PersonalTrainingConfig, int8: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = personalize(
            PersonalizationConfig(
                data_dir=folder, out=Path(tmp) / "personal.safetensors", training=recipe, seed=recipe.seed
            )
        )
        seconds = time.perf_counter() - start
        exported = export_accuracy(result.out, folder, result.recipe.max_length) if int8 else {}
    return {
        "accuracy": result.after.accuracy,
        "train_seconds": result.recipe.training.seconds,
        "wall_seconds": seconds,
        "bytes": result.num_bytes,
        "max_length": result.recipe.max_length,
        "validation": {
            "measure": result.recipe.measure,
            "start": result.recipe.start_score,
            "best": result.recipe.best_score,
            "start_accuracy": result.recipe.start_accuracy,
            "kept_accuracy": result.recipe.kept_accuracy,
            "history": result.recipe.history,
            "improved": result.recipe.improved,
            "held_back": result.recipe.held_back,
            "lam": result.recipe.lam,
            "lam_scores": result.recipe.lam_scores,
        },
        "frozen_same_run": result.baselines["frozen features + logistic regression"].accuracy,
        **parts_fields(result),
        **exported,
    }


def export_accuracy(adapter: Path, folder: Path, max_length: int) -> dict:
    """onnxruntime accuracy on the test split of the merged fp32 export and its int8 quantization."""
    from client.onnx.job import ExportConfig, run_export

    report = run_export(
        ExportConfig(
            adapter=adapter,
            out=adapter.parent / "export" / "model.onnx",
            quantize="int8",
            data_dir=folder,
            max_length=max_length,
            repeats=1,
        )
    )
    return {"onnx_accuracy": report.accuracy}


def parts_fields(result) -> dict:
    """The lexical part and temperature of one `client.run`: what was kept, why, what it cost."""
    choice = result.parts
    if choice is None:
        return {}
    return {
        "encoder_accuracy": result.after_encoder.accuracy,
        "lexical_mix": choice.mix,
        "lexical_terms": choice.vocabulary,
        "lexical_only_val_accuracy": choice.lexical_only_accuracy,
        "mix_scores": {str(m): list(v) for m, v in choice.scores.items()},
        "temperature": choice.parts.temperature,
        "calibration": asdict(result.calibration) if result.calibration else None,
        "val_nll": list(choice.val_nll),
        "val_ece": list(choice.val_ece),
        "encoder_bytes": result.encoder_bytes,
        "parts_bytes": result.num_bytes - result.encoder_bytes,
    }


def run_tfidf(split: Split) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    fit_y, val_y = list(split.fit["label"]), list(split.val["label"])
    best = None
    for c in TFIDF_C:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        classifier = LogisticRegression(C=c, max_iter=3000).fit(vectorizer.fit_transform(split.fit["text"]), fit_y)
        score = classifier.score(vectorizer.transform(split.val["text"]), val_y)
        if best is None or score > best[0]:
            best = (score, c)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    train_x = vectorizer.fit_transform(list(split.fit["text"]) + list(split.val["text"]))
    classifier = LogisticRegression(C=best[1], max_iter=3000).fit(train_x, fit_y + val_y)
    seconds = time.perf_counter() - start
    accuracy = classifier.score(vectorizer.transform(split.splits.test["text"]), list(split.splits.test["label"]))
    return {"accuracy": float(accuracy), "train_seconds": seconds, "C": best[1]}


def run_method(method: str, folder: Path, split: Split, recipe: PersonalTrainingConfig, int8: bool = False) -> dict:
    if method == "loraxs":
        return run_loraxs(folder, recipe, int8)
    if method == "frozen":
        return run_frozen(split, recipe)
    if method == "tfidf":
        return run_tfidf(split)
    return run_finetune(method, split, recipe)


def seeds_row(runs: list[dict], seeds: list[int]) -> dict:
    """One row from one run per seed: mean accuracy and training seconds, the runs kept."""
    accuracies = [run["accuracy"] for run in runs]
    row = {
        "accuracy": statistics.fmean(accuracies),
        "accuracies": accuracies,
        "seeds": seeds,
        "train_seconds": statistics.fmean(run["train_seconds"] for run in runs),
        "runs": runs,
    }
    if all("bytes" in run for run in runs):
        row["bytes"] = max(run["bytes"] for run in runs)
    return row


def accuracy_cell(row: dict) -> str:
    if "accuracies" not in row:
        return f"{row['accuracy']:.3f}"
    return f"{row['accuracy']:.3f} ({min(row['accuracies']):.3f}–{max(row['accuracies']):.3f})"


def _machine_text(machine) -> str:
    """Earlier result files hold a line of text, newer ones result_files.machine_now()'s dict."""
    return machine if isinstance(machine, str) else f"{machine.get('cores')} cores, torch {machine.get('torch')}"


def markdown(report: dict) -> str:
    seeds = report.get("seeds", [0])
    lines = [
        "# Small real folders: `client.run` defaults vs the alternatives\n",
        f"`{report['command']}` — {report['date']}, {_machine_text(report['machine'])}, "
        f"load before {report['load_before']}\n",
        *(
            [
                f"Mean of {len(seeds)} runs (seeds {', '.join(map(str, seeds))}: validation split, initialization, "
                "batch order; the test split is the folder's), lowest–highest in brackets; training seconds "
                "per run.\n"
            ]
            if len(seeds) > 1
            else []
        ),
        "| folder | examples (train/test) | labels | method | accuracy | train s | bytes |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for folder, entry in report["folders"].items():
        for method, row in entry["methods"].items():
            bytes_ = f"{row['bytes']:,}" if "bytes" in row else "—"
            lines.append(
                f"| {folder}{' (tuning)' if folder in TUNING else ' (held out)'} | "
                f"{entry['train']}/{entry['test']} | {entry['labels']} | {method} | "
                f"{accuracy_cell(row)} | {row['train_seconds']:.1f} | {bytes_} |"
            )
    lines += [
        "",
        "Goals, per folder (from the numbers above): the `client.run` default (loraxs) against "
        "frozen embeddings + logistic regression (must beat), PEFT LoRA r=8 (within 2 points) and "
        "TF-IDF + logistic regression (beat on most folders).",
        "",
        "| folder | vs frozen | vs LoRA r=8 | vs TF-IDF |",
        "|---|---|---|---|",
    ]
    for folder, entry in report["folders"].items():
        rows = entry["methods"]
        if "loraxs" not in rows:
            continue
        ours = rows["loraxs"]["accuracy"]

        def versus(other: str, margin: float = 0.0) -> str:
            if other not in rows:
                return "—"
            gap = ours - rows[other]["accuracy"]
            word = (
                ("within 2 pts" if goal_met(gap, margin) else "missed")
                if margin
                else ("beaten" if goal_met(gap) else "tied" if gap >= -SAME else "not beaten")
            )
            return f"{round(100 * gap, 1) + 0.0:+.1f} pts, {word}"  # + 0.0: no "-0.0"

        lines.append(f"| {folder} | {versus('frozen')} | {versus('lora', 0.02)} | {versus('tfidf')} |")
    lines += ["", *goal_counts(report)]
    return "\n".join(lines) + "\n"


def goal_met(gap: float, margin: float | None = None) -> bool:
    """LoRA-XS's accuracy minus another's meets the goal: within `margin` below, or (no margin)
    strictly above."""
    return gap >= -margin - SAME if margin else gap > SAME


GOALS = (
    ("frozen", "beats frozen embeddings + LR", None),
    ("lora", "within 2 points of PEFT LoRA r=8", 0.02),
    ("tfidf", "beats TF-IDF + LR", None),
)


def _goal_pairs(report: dict, other: str) -> list[tuple[str, float]]:
    """(folder, LoRA-XS accuracy minus `other`'s) for every folder with both rows."""
    return [
        (name, e["methods"]["loraxs"]["accuracy"] - e["methods"][other]["accuracy"])
        for name, e in report["folders"].items()
        if {"loraxs", other} <= set(e["methods"])
    ]


def goal_counts(report: dict) -> list[str]:
    """How many folders meet each goal, among those with both rows."""
    out = []
    for other, label, margin in GOALS:
        pairs = _goal_pairs(report, other)
        if pairs:
            met = [name for name, gap in pairs if goal_met(gap, margin)]
            out.append(
                f"- {label}: {len(met)} of {len(pairs)} folders"
                + (f" (not: {', '.join(n for n, _ in pairs if n not in met)})" if len(met) < len(pairs) else "")
            )
    return out


def goals(report: dict) -> list[dict]:
    """The goals for RESULTS.md: on every measured folder, the `client.run` default against each baseline."""
    out = []
    for other, label, margin in GOALS:
        pairs = _goal_pairs(report, other)
        if pairs:
            missed = [name for name, gap in pairs if not goal_met(gap, margin)]
            out.append(
                goal(
                    f"client.run {label}, on every folder",
                    f"{len(pairs) - len(missed)} of {len(pairs)} folders",
                    not missed,
                    f"not on {', '.join(missed)}" if missed else "",
                )
            )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(os.sys.argv[1:] if argv is None else argv)
    if "--speed" in argv:
        from benchmarks.small_data_speed import main as speed

        speed([a for a in argv if a != "--speed"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folders",
        nargs="+",
        default=["debates", "debian", "convention", "manpages", "docstrings", "hamlet", "maintainers", "stdlib"],
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--finetune-folders",
        nargs="+",
        default=None,
        metavar="FOLDER",
        help="run lora and full only on these folders (default: every folder); fine-tuning "
        "a 110 MB model on the long-text folders takes most of an hour on 2 cores",
    )
    parser.add_argument("--data-root", type=Path, default=user_cache_dir() / "small_folders")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default="small_data", help="result file name: <out>/<name>.json and .md")
    parser.add_argument(
        "--select-on",
        choices=("loss", "accuracy"),
        default=PersonalTrainingConfig().select_on,
        help="the recipe's validation measure (default: client.run's)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="one run per seed (validation split, initialization, batch order; the test split "
        "is the folder's): accuracy is the mean, with every seed's in the JSON",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="loraxs, first seed: also export to ONNX (fp32 and int8) and measure both on the test split",
    )
    parser.add_argument(
        "--joint-lexical", action="store_true", help="client.run --joint-lexical (the lexical part trained with R)"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from --out's JSON")
    args = parser.parse_args(argv)
    if args.render:
        report = load_result(args.out, args.name)
        if not report:
            parser.error(f"no readable {args.name}.json in {args.out}")
        (args.out / f"{args.name}.md").write_text(markdown(report))
        return
    folders = build_folders(args.data_root)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    machine = machine_now()
    report = {
        "command": command_line("benchmarks.small_data", argv),
        "date": machine["date"],
        "machine": machine,
        "load_before": machine["load_average_before"],
        "seeds": args.seeds,
        "folders": {},
    }
    recipes = {
        seed: PersonalTrainingConfig(select_on=args.select_on, seed=seed, joint_lexical=args.joint_lexical)
        for seed in args.seeds
    }
    splits = {
        (name, seed): Split(folders[name], recipes[seed], tokenizer) for name in args.folders for seed in args.seeds
    }
    for name in args.folders:
        split = splits[name, args.seeds[0]]
        report["folders"][name] = {
            "train": len(split.splits.train),
            "test": len(split.splits.test),
            "labels": split.num_labels,
            "max_length": split.max_length,
            "methods": {},
        }
    # method by method, the quick ones first, the report rewritten after every row
    for method in sorted(args.methods, key=RUN_ORDER.index):
        for name in args.folders:
            if method in ("lora", "full") and args.finetune_folders is not None and name not in args.finetune_folders:
                continue
            runs = []
            for seed in args.seeds:
                torch.manual_seed(seed)
                runs.append(
                    run_method(
                        method, folders[name], splits[name, seed], recipes[seed], args.int8 and seed == args.seeds[0]
                    )
                )
            row = runs[0] if len(runs) == 1 else seeds_row(runs, args.seeds)
            methods = report["folders"][name]["methods"]
            methods[method] = row
            report["folders"][name]["methods"] = {m: methods[m] for m in METHODS if m in methods}
            print(f"{name} {method}: accuracy {row['accuracy']:.3f}, {row['train_seconds']:.1f} s", flush=True)
            report["goals"] = goals(report)
            write_result(args.out, args.name, report, markdown(report))  # a run cut short keeps its rows
    report["load_after"] = report["machine"]["load_average_after"]
    write_result(args.out, args.name, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
