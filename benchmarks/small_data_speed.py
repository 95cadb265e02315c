"""Time to accuracy of `client.run` on small real folders: a baseline checkout's recipe and this
checkout's, side by side in one run.

    python -m benchmarks.small_data_speed [--folders debates hamlet debian manpages] [--seeds 0 1 2]
        [--baseline-checkout DIR --baseline-seeds 0] [--budgets 30 60 120] [--out benchmarks/results]

Every run is `client.run --data DIR` with the defaults (`benchmarks/recipe_run.py`) in a fresh
subprocess: wall seconds of the whole process (what a user waits), its peak RSS, optimizer steps
and held-out accuracy. `--budgets`: this checkout's recipe with `--time-budget` (seed 0); a
budget above the full run's time does not bind and is not re-run (the row says so). The compute
floor of a folder: one forward pass of every text (train + test) through the network plus one
epoch of forward + backward of the fit texts through the blocks that train, at the throughput
measured here (batch 16 x 128 tokens). Writes small_data_speed.json / .md via result_files.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.result_files import (
    RESULTS,
    command_line,
    footer,
    goal,
    goal_lines,
    load_average,
    machine_now,
    write_result,
)
from benchmarks.small_folders import TUNING, build_folders
from shared.artifacts.cache import user_cache_dir
from shared.recipe.config import PersonalTrainingConfig

HERE = Path(__file__).resolve().parent.parent
RUN_SCRIPT = Path(__file__).resolve().parent / "recipe_run.py"
NAME = "small_data_speed"


def run_once(checkout: Path, folder: Path, seed: int, budget: float | None = None) -> dict:
    """One personalization in a fresh interpreter of `checkout`; its JSON plus wall seconds."""
    command = [sys.executable, str(RUN_SCRIPT), "--data", str(folder), "--seed", str(seed)]
    command += ["--time-budget", str(budget)] if budget else []
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = load_average()
    started = time.monotonic()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"run failed in {checkout}: {done.stderr.strip().splitlines()[-1:]}")
    return {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "wall_seconds": wall,
        "load_before": load,
        "seed": seed,
        **({"budget": budget} if budget else {}),
    }


def throughput() -> dict:
    """Tokens per second of the packaged MiniLM with LoRA-XS on this machine (batch 16 x 128
    tokens): forward alone in float32 and bfloat16 autocast, forward + backward to the R in
    float32 (the recipe's training steps are float32)."""
    import torch

    from shared.base_models import DEFAULT_MODEL, load_base_model
    from shared.loraxs.config import LoraXSConfig
    from shared.loraxs.model import inject

    model = load_base_model(DEFAULT_MODEL, "seq-cls", 2, 0)
    inject(model, LoraXSConfig(), train_head=True)
    model.eval()
    ids = torch.randint(1000, 20000, (16, 128))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(16, dtype=torch.int64)}
    out = {"blocks": len(model.backbone.encoder.layer)}
    for name, bf16, mode in (
        ("fp32", False, "forward"),
        ("bf16", True, "forward"),
        ("fp32", False, "forward_backward"),
    ):
        seconds = []
        for _ in range(4):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if mode == "forward":
                    with torch.inference_mode():
                        model(**batch)
                else:
                    model(**batch).loss.backward()
            seconds.append(time.perf_counter() - started)
        out[f"{name}_{mode}_tokens_per_second"] = ids.numel() / statistics.median(seconds[1:])
    return out


def token_counts(folder: Path, max_length: int, seed: int) -> dict:
    """Tokens (truncated to `max_length`) of the train split, its fit part and the test split."""
    from shared.base_models import DEFAULT_MODEL, load_tokenizer
    from shared.data.local_folder import load_local_folder
    from shared.recipe.data import split_validation

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    splits = load_local_folder(folder, seed=seed)
    count = lambda texts: [len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    train, test = count(splits.train["text"]), count(splits.test["text"])
    fit, _ = split_validation(list(splits.train["label"]), PersonalTrainingConfig().val_fraction, seed, stratify=True)
    return {
        "train": sum(train),
        "test": sum(test),
        "fit": sum(train[i] for i in fit),
        "texts": [len(train), len(test)],
        "p95": float(np.percentile(train, 95)),
    }


def floor_seconds(tokens: dict, speed: dict, precision: str, trained_blocks: int) -> float:
    forward = (tokens["train"] + tokens["test"]) / speed[f"{precision}_forward_tokens_per_second"]
    train = tokens["fit"] * trained_blocks / speed["blocks"] / speed["fp32_forward_backward_tokens_per_second"]
    return forward + train


def summary(runs: list[dict]) -> dict:
    return {
        "accuracy": statistics.fmean(r["accuracy"] for r in runs),
        "accuracies": [r["accuracy"] for r in runs],
        "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "steps": statistics.fmean(r["steps"] for r in runs),
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
    }


def markdown(document: dict) -> str:
    document["goals"] = goals(document)
    lines = [
        "# Time to accuracy on small real folders: today's recipe and the new one\n",
        "Each run is `client.run --data DIR` with the defaults in a fresh process; wall = the whole "
        "process; accuracy on the folder's test split, mean over the seeds shown (lowest-highest); "
        "load = the 1-minute load average before each run (2 cores: above 2, other jobs shared them).\n",
        "| folder | texts | p95 tokens | recipe | seeds | accuracy | wall s | peak RSS MB | steps | "
        "acc @30 s | acc @60 s | acc @120 s | floor s | wall / floor | load |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in document["folders"].items():
        tag = " (tuning)" if name in TUNING else " (held out)"
        for recipe, row in entry["recipes"].items():
            acc = f"{row['accuracy']:.3f} ({min(row['accuracies']):.3f}-{max(row['accuracies']):.3f})"
            budgets = [entry.get("budgets", {}).get(str(b)) if recipe == "new" else None for b in (30, 60, 120)]
            cells = [
                ("—" if b is None else f"{b['accuracy']:.3f}" + ("" if b.get("binding", True) else " (not binding)"))
                for b in budgets
            ]
            floor = f"{entry['floor_seconds']:.1f}" if recipe == "new" else "—"
            ratio = f"{row['wall_seconds'] / entry['floor_seconds']:.1f}" if recipe == "new" else "—"
            lines.append(
                f"| {name}{tag} | {entry['texts'][0]}/{entry['texts'][1]} | {entry['p95']:.0f} | {recipe} | "
                f"{len(row['seeds'])} | {acc} | {row['wall_seconds']:.1f} | {row['peak_rss_mb']:.0f} | "
                f"{row['steps']:.0f} | {' | '.join(cells)} | {floor} | {ratio} | "
                f"{statistics.fmean(r['load_before'] for r in row['runs']):.1f} |"
            )
    for given in document.get("baseline_from", []):
        lines += [
            "",
            f"The `today` rows of {', '.join(given['folders'])} come from an earlier run of this benchmark "
            f"({given['date']}, the baseline checkout alone, one thread, beside other jobs): compare their "
            "accuracy, not their wall time or RSS.",
        ]
    speed = document["throughput"]
    lines += [
        "",
        f"Throughput here (MiniLM + LoRA-XS, batch 16 x 128): forward {speed['fp32_forward_tokens_per_second']:.0f} "
        f"tokens/s fp32, {speed['bf16_forward_tokens_per_second']:.0f} bf16; forward + backward "
        f"{speed['fp32_forward_backward_tokens_per_second']:.0f} fp32.",
        "",
        *goal_lines(document["goals"]),
        "",
        footer(document),
    ]
    return "\n".join(lines) + "\n"


def goals(document: dict) -> list[dict]:
    rows = {name: e["recipes"] for name, e in document["folders"].items() if "new" in e["recipes"]}
    if not rows:
        return []
    walls = [r["new"]["wall_seconds"] for r in rows.values()]
    rss = [r["new"]["peak_rss_mb"] for r in rows.values()]
    gaps = {n: r["new"]["accuracy"] - r["today"]["accuracy"] for n, r in rows.items() if "today" in r}
    out = [
        goal(
            "median wall time <= 60 s",
            f"{statistics.median(walls):.1f} s",
            statistics.median(walls) <= 60,
            "the compute floor and the machine's load (see wall / floor)",
        ),
        goal("no folder above 120 s", f"max {max(walls):.1f} s", max(walls) <= 120, "long texts: see wall / floor"),
        goal(
            "peak RSS <= 1 GB", f"max {max(rss):.0f} MB", max(rss) <= 1024, "torch + the model + cached hidden states"
        ),
    ]
    if gaps:
        worst = min(gaps.values())
        mean_gap = statistics.fmean(gaps.values())
        out.append(
            goal(
                "accuracy within 1 point of today's recipe (mean over folders), none more than 2 below",
                f"mean {100 * mean_gap:+.1f} pts, worst {100 * worst:+.1f} pts "
                f"({', '.join(f'{n} {100 * g:+.1f}' for n, g in gaps.items())})",
                mean_gap >= -0.01 - 1e-9 and worst >= -0.02 - 1e-9,
                "see the folders below 1 point",
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", default=["debates", "hamlet", "debian", "manpages"])
    parser.add_argument(
        "--seeds", nargs="*", type=int, default=[0, 1, 2], help="this checkout's seeds (none: run only the baseline)"
    )
    parser.add_argument(
        "--baseline-checkout", type=Path, help="a checkout of today's recipe (git worktree add DIR main)"
    )
    parser.add_argument("--baseline-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--baseline-folders", nargs="+", help="run the baseline only on these folders (default: all)")
    parser.add_argument(
        "--baseline-from",
        type=Path,
        nargs="+",
        default=[],
        help="take the baseline rows from earlier small_data_speed.json files (a folder's from "
        "the first that has it, with its seeds) instead of running them: the runs keep "
        "their own load, and the files' dates are recorded",
    )
    parser.add_argument("--budgets", nargs="*", type=float, default=[30, 60, 120])
    parser.add_argument("--data-root", type=Path, default=user_cache_dir() / "small_folders")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folders = build_folders(args.data_root)
    document = {
        "command": command_line("benchmarks." + NAME, argv),
        "machine": machine_now(),
        "baseline_checkout": "given" if args.baseline_checkout else None,
        "folders": {},
    }
    earlier: dict = {}
    for path in args.baseline_from:
        given = json.loads(path.read_text())
        found = {k: v for k, v in given["folders"].items() if "today" in v["recipes"] and k not in earlier}
        earlier.update(found)
        document.setdefault("baseline_from", []).append(
            {"folders": sorted(found), "date": given["machine"].get("date")}
        )
    document["throughput"] = speed = throughput()
    print("throughput (tokens/s):", {k: round(v) for k, v in speed.items()}, flush=True)
    for name in args.folders:
        entry = document["folders"][name] = {"recipes": {}, "budgets": {}}
        save = lambda: write_result(args.out, NAME, document, markdown(document))
        new_runs = []
        for seed in args.seeds:
            new_runs.append(run_once(HERE, folders[name], seed))
            entry["recipes"]["new"] = summary(new_runs)
            if len(new_runs) == 1:
                first = new_runs[0]
                tokens = token_counts(folders[name], first["max_length"], first["seed"])
                entry.update(texts=tokens["texts"], p95=tokens["p95"], tokens=tokens)
                config = PersonalTrainingConfig()
                blocks = config.train_blocks or speed["blocks"]
                entry["floor_seconds"] = floor_seconds(tokens, speed, "bf16" if config.bf16 else "fp32", blocks)
            save()
        if name in earlier and "today" in earlier[name]["recipes"]:
            entry["recipes"]["today"] = earlier[name]["recipes"]["today"]
            if not new_runs:
                entry.update({k: earlier[name][k] for k in ("texts", "p95", "tokens") if k in earlier[name]})
            save()
        elif args.baseline_checkout and (args.baseline_folders is None or name in args.baseline_folders):
            old_runs = []
            for seed in args.baseline_seeds:
                old_runs.append(run_once(args.baseline_checkout, folders[name], seed))
                if "texts" not in entry:  # no run of this checkout: the folder's counts from the baseline's
                    tokens = token_counts(folders[name], old_runs[0]["max_length"], old_runs[0]["seed"])
                    entry.update(texts=tokens["texts"], p95=tokens["p95"], tokens=tokens)
                entry["recipes"]["today"] = summary(old_runs)
                document["goals"] = goals(document)
                save()
        if not new_runs:
            continue
        first = new_runs[0]
        for budget in args.budgets:
            if first["personalize_seconds"] <= budget:
                entry["budgets"][str(int(budget))] = {"accuracy": first["accuracy"], "binding": False}
            else:
                run = run_once(HERE, folders[name], first["seed"], budget)
                entry["budgets"][str(int(budget))] = {**run, "binding": True}
            save()
        print(
            f"{name}: "
            + ", ".join(f"{k} {v['accuracy']:.3f} in {v['wall_seconds']:.0f} s" for k, v in entry["recipes"].items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
