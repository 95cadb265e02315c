"""What every benchmark run by `benchmarks.all` writes: `<name>.json` and `<name>.md` in one folder.

The JSON holds "command", "machine" (cores, load average before/after, date), the benchmark's own
fields, and "goals": [{"goal", "measured", "met", "limit"}], where "limit" says what holds a
missed goal back. `benchmarks/results_page.py` gathers them into RESULTS.md.
"""

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_now() -> dict:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "torch": torch.__version__, "load_average_before": round(os.getloadavg()[0], 2)}


def command_line(module: str, argv: list[str] | None) -> str:
    return " ".join(["python -m", module, *(argv if argv is not None else sys.argv[1:])])


def goal(text: str, measured: str, met: bool, limit: str = "") -> dict:
    return {"goal": text, "measured": measured, "met": bool(met), "limit": "" if met else limit}


def goal_lines(goals: list[dict]) -> list[str]:
    """One markdown bullet per goal: what, measured, met or missed and why."""
    return [f"- {g['goal']}: {g['measured']} ({'met' if g['met'] else 'missed: ' + g['limit']})" for g in goals]


def footer(document: dict) -> str:
    """The command and when it ran, for the end of a benchmark's markdown."""
    machine = document["machine"]
    return (f"Command: `{document['command']}` ({machine['date']}, load average "
            f"{machine['load_average_before']} before).")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a non-finite number would be written")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_result(out: Path, name: str, document: dict, markdown: str) -> None:
    """`document` (with the load average after the run added) as JSON, `markdown` beside it."""
    out.mkdir(parents=True, exist_ok=True)
    document["machine"] = {**document.get("machine", {}), "load_average_after": round(os.getloadavg()[0], 2)}
    (out / f"{name}.json").write_text(json.dumps(_finite(document), indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
