"""One `client.run`-style personalization in this process, reported as one JSON line.

    python benchmarks/recipe_run.py --data DIR --seed S [--time-budget SECONDS] [--train-blocks N]

Run as a file with PYTHONPATH set to a checkout, so it times whichever recipe that checkout has
(the benchmark runs it in a fresh subprocess per run: wall time and peak RSS of that run alone).
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (ru_maxrss would count the parent's RSS at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    began = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float)
    parser.add_argument("--train-blocks", type=int)
    args = parser.parse_args(argv)
    from client.personalization import PersonalizationConfig, personalize
    from shared.personal_training import PersonalTrainingConfig

    extra = {k: v for k, v in (("time_budget", args.time_budget), ("train_blocks", args.train_blocks)) if v}
    imported = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = personalize(
            PersonalizationConfig(
                data_dir=args.data,
                out=Path(tmp) / "personal.safetensors",
                seed=args.seed,
                progress=False,
                training=PersonalTrainingConfig(seed=args.seed, **extra),
            )
        )
    recipe = result.recipe
    print(
        json.dumps(
            {
                "accuracy": result.after.accuracy,
                "frozen": result.baselines["frozen features + logistic regression"].accuracy,
                "steps": recipe.training.steps,
                "train_seconds": recipe.training.seconds,
                "max_length": recipe.max_length,
                "personalize_seconds": time.monotonic() - imported,
                "process_seconds": time.monotonic() - began,
                "peak_rss_mb": peak_rss_mb(),
                "stopped_on_time": bool(getattr(recipe, "stopped_on_time", False)),
                "epochs_validated": len(recipe.history),
                "phases": getattr(recipe, "seconds", {}),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
