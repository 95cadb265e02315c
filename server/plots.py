"""The two PNG plots of a run report: accuracy per round, bytes per round."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def plot_accuracy(report: dict, path: Path) -> None:
    rounds = report["rounds"]
    figure, axes = plt.subplots(figsize=(6, 4))
    points = [(r["round"], r["accuracy_global"]) for r in rounds if r["accuracy_global"] is not None]
    if points:
        axes.plot(*zip(*points), marker="o", label="global (server held-out set)")
    personal = [(r["round"], r["accuracy_personalized"]) for r in rounds if r.get("accuracy_personalized") is not None]
    if personal:
        axes.plot(*zip(*personal), marker="s", label="personalized (sampled clients)")
    final = report["final"]
    if final.get("accuracy_personalized") is not None:
        axes.axhline(
            final["accuracy_personalized"], linestyle="--", color="tab:green", label="personalized, final evaluation"
        )
    axes.set_xlabel("round")
    axes.set_ylabel("accuracy")
    axes.set_title("Accuracy per round")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_bytes(report: dict, path: Path) -> None:
    """Three bars per round (log scale): adapter down, factors down, updates up."""
    rounds = report["rounds"]
    x = [r["round"] for r in rounds]
    series = {
        "down: global adapter": [(r["bytes_down"] - r["basis_bytes_down"]) / 1024 for r in rounds],
        "down: factors (once per client)": [r["basis_bytes_down"] / 1024 for r in rounds],
        "up: client updates": [r["bytes_up"] / 1024 for r in rounds],
    }
    figure, axes = plt.subplots(figsize=(6, 4))
    width = 0.27
    for i, (label, values) in enumerate(series.items()):
        axes.bar([v + (i - 1) * width for v in x], values, width, label=label)
    positive = [v for values in series.values() for v in values if v > 0]
    if positive:
        axes.set_yscale("log")
        axes.set_ylim(bottom=min(positive) / 2, top=max(positive) * 3)
    axes.set_xticks(x)
    axes.set_xlabel("round")
    axes.set_ylabel("KiB, all clients, measured on the wire")
    axes.set_title("Bytes per round")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
