"""What every benchmark writes: `<name>.json` and `<name>.md` in its `--out` folder.

The JSON holds "command" (as run, paths relative to the repository), "machine" (`machine_now`:
cores, load average before / after, date), the benchmark's own fields, and "goals":
[{"goal", "measured", "met", "limit"}], where "limit" says what holds a missed goal back.
`benchmarks/results_page.py` gathers them into RESULTS.md.
"""

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STUDY_RESULTS = REPO / "benchmarks" / "studies" / "results"


def load_average() -> float:
    """The 1-minute load average, rounded: other work on the machine skews every timing."""
    return round(os.getloadavg()[0], 2)


def machine_now(with_torch: bool = True) -> dict:
    """The machine a result comes from, at the start of a run; `with_torch=False` for a benchmark
    whose own process never imports torch (its threads and version are then not recorded)."""
    machine = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_average(),
    }
    if with_torch:
        import torch

        machine.update(torch_threads=torch.get_num_threads(), torch=torch.__version__)
    return machine


def portable(argument: str) -> str:
    """An absolute path inside the repository made relative to it; one outside it reduced to
    `.../<name>` (a result file never records this machine's folders)."""
    if not argument.startswith("/"):
        return argument
    path = Path(argument)
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO)) or "."
    return f".../{path.name}"


def command_line(module: str, argv: list[str] | None) -> str:
    """`python -m <module> <args>` as run, with portable paths."""
    return " ".join(["python -m", module, *map(portable, argv if argv is not None else sys.argv[1:])])


def goal(text: str, measured: str, met: bool, limit: str = "") -> dict:
    return {"goal": text, "measured": measured, "met": bool(met), "limit": "" if met else limit}


def goal_lines(goals: list[dict]) -> list[str]:
    """One markdown bullet per goal: what, measured, met or missed and why."""
    return [f"- {g['goal']}: {g['measured']} ({'met' if g['met'] else 'missed: ' + g['limit']})" for g in goals]


def footer(document: dict) -> str:
    """The command and when it ran, for the end of a benchmark's markdown."""
    machine = document["machine"]
    after = machine.get("load_average_after")
    return (
        f"Command: `{document['command']}` ({machine['date']}, {machine['cores']} cores, load average "
        f"{machine['load_average_before']} before" + (f", {after} after" if after is not None else "") + ")."
    )


def load_result(out: Path, name: str) -> dict:
    """An earlier `<name>.json` in `out` ({} when there is none or it does not read)."""
    try:
        document = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


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
    document["machine"] = {**document.get("machine", {}), "load_average_after": load_average()}
    (out / f"{name}.json").write_text(json.dumps(_finite(document), indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
