"""The results of benchmarks/deployment_load.py: why a level broke (read from its logs), the runs
kept side by side in one file (one per fraction-train: every node training, and sampled), and
their markdown. Pure functions over the level dicts; nothing here starts a process."""

import re
import statistics

# A Python exception line ("LoraXSError: ...", "grpc.RpcError: ...") or a Flower ERROR log line.
_EXCEPTION = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b:?")
_ERROR = re.compile(r"\bERROR\b|Traceback \(most recent call last\)|\bKilled\b|exit code|exited with")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log levels
LOG_ORDER = ("flwr-run.log", "superlink.log", "supernode-0.log")  # where the ServerApp's words land first
MAX_REASON = 300


def break_reason(tails: dict[str, list[str]]) -> str | None:
    """The most telling line of the logs' tails: the last exception line of the first log that
    has one (flwr-run.log, which streams the ServerApp's log, before superlink.log), else the
    last ERROR / Traceback / Killed line; None when the logs say nothing wrong."""
    for pattern in (_EXCEPTION, _ERROR):
        for name in [n for n in LOG_ORDER if n in tails] + sorted(set(tails) - set(LOG_ORDER)):
            hits = [plain(line) for line in tails[name] if isinstance(line, str) and pattern.search(plain(line))]
            hits = [h for h in hits if h != "Traceback (most recent call last):"] or hits
            if hits:
                return f"{name}: {hits[-1]}"[:MAX_REASON]
    return None


def plain(line: str) -> str:
    return _COLOUR.sub("", line).strip()


def error_summary(logs: dict[str, list[str]]) -> dict:
    """The logs that hold Flower ERROR lines: how many, and the first one (e.g. the SuperLink's
    "database is locked", a SuperNode's "500 Internal Server Error")."""
    summary = {}
    for name, lines in logs.items():
        errors = [plain(line) for line in lines if "ERROR" in line]
        if errors:
            summary[name] = {"errors": len(errors), "first": errors[0][:MAX_REASON]}
    return summary


def _errors_text(summary: dict, nodes: int) -> str:
    if not summary:
        return ""
    superlink = summary.get("superlink.log")
    supernodes = sorted(
        (n for n in summary if n.startswith("supernode-")), key=lambda n: int(re.sub(r"\D", "", n) or 0)
    )
    parts = []
    if superlink:
        parts.append(f"superlink.log has {superlink['errors']} ERROR line(s), the first: `{superlink['first']}`")
    if supernodes:
        parts.append(
            f"{len(supernodes)} of {nodes} SuperNode logs have ERROR lines ({', '.join(supernodes[:5])}"
            f"{', ...' if len(supernodes) > 5 else ''}), the first: `{summary[supernodes[0]]['first']}`"
        )
    return "; ".join(parts)


def last_round_started(lines: list[str]) -> int | None:
    """The last "[ROUND k/R]" the ServerApp logged (0 rounds started: None)."""
    rounds = [int(m.group(1)) for line in lines for m in [_ROUND.search(line)] if m]
    return rounds[-1] if rounds else None


def merged_runs(previous: dict | None, run: dict) -> list[dict]:
    """The runs a results file keeps, one per fraction-train, all-train first (a file from before
    fractions, {"meta", "levels"}, is the all-train run). A new run replaces the levels it
    measured; the other levels of an earlier run with its fraction stay, each level saying which
    command measured it ("measured": date and command)."""
    runs = []
    if isinstance(previous, dict):
        if isinstance(previous.get("runs"), list):
            runs = [r for r in previous["runs"] if isinstance(r, dict) and "meta" in r and "levels" in r]
        elif "meta" in previous and "levels" in previous:
            runs = [{"meta": {**previous["meta"], "fraction": 1.0}, "levels": previous["levels"]}]
    fraction = run["meta"]["fraction"]
    levels = [_stamped(lv, run["meta"]) for lv in run["levels"]]
    for earlier in [r for r in runs if r["meta"].get("fraction", 1.0) == fraction]:
        measured = {lv["nodes"] for lv in levels}
        levels += [_stamped(lv, earlier["meta"]) for lv in earlier["levels"] if lv.get("nodes") not in measured]
    run = {"meta": run["meta"], "levels": sorted(levels, key=lambda lv: lv["nodes"])}
    runs = [r for r in runs if r["meta"].get("fraction", 1.0) != fraction]
    return sorted(runs + [run], key=lambda r: -r["meta"].get("fraction", 1.0))


def _stamped(level: dict, meta: dict) -> dict:
    return level if "measured" in level else {**level, "measured": {k: meta.get(k) for k in ("date", "command")}}


def _num(value, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _idle_per_node(lv: dict) -> str:
    idle = lv.get("idle")
    if not idle:
        return "-"
    return (
        f"{_num(idle.get('node_rss_mib_per_node'))} ({_num(idle.get('node_pss_mib_per_node'))}); "
        f"{_num(idle.get('mem_available_drop_mib_per_node'))}"
    )


def _level_row(lv: dict) -> str:
    if lv.get("skipped"):
        return f"| {lv['nodes']} | | | | | | | | | | | | | skipped: {lv['skipped']} |"
    rounds = lv.get("round_seconds") or []
    med = f"{lv['round_seconds_median']:.1f} ({', '.join(f'{s:.1f}' for s in rounds)})" if rounds else "-"
    up, down = lv.get("bytes_up_per_round") or [], lv.get("bytes_down_per_round") or []
    up_text = f"{statistics.median(up):,.0f}" if up else "-"
    down_text = f"{down[0]:,}; {down[-1]:,}" if len(down) > 1 else (f"{down[0]:,}" if down else "-")
    trained = lv.get("clients_trained")
    memory = " / ".join(
        _num(lv.get(k), ".2f") for k in ("mem_available_before_gib", "mem_available_idle_gib", "min_mem_available_gib")
    )
    return (
        f"| {lv['nodes']} | {', '.join(map(str, trained)) if trained else '-'} | "
        f"{lv.get('seconds_until_all_online', '-')} | {med} | {up_text} | {down_text} | "
        f"{_num(lv.get('superlink_cpu_s'), '.1f')} ({_num(lv.get('superlink_tree_cpu_s'), '.1f')}) | "
        f"{_num(lv.get('superlink_peak_rss_mib'))} ({_num(lv.get('superlink_tree_peak_rss_mib'))}) | {_idle_per_node(lv)} | "
        f"{_num(lv.get('peak_clientapps_alive'), 'd')} | {_num(lv.get('clientapp_peak_rss_mib_each'))} | "
        f"{_num(lv.get('peak_rss_everything_mib'))} | {memory} | "
        f"{'ok' if not lv['broken'] else 'BROKE: ' + lv['broken']} |"
    )


def _commands(levels: list[dict], meta: dict) -> str:
    """ "Command: `...`", or which levels which command measured when they differ."""
    groups: dict[tuple, list[int]] = {}
    for lv in levels:
        measured = lv.get("measured") or meta
        groups.setdefault((measured.get("command"), measured.get("date")), []).append(lv["nodes"])
    if len(groups) <= 1:
        return f"Command: `{meta['command']}`."
    return (
        "Levels by command: "
        + "; ".join(
            f"{', '.join(map(str, nodes))} nodes: `{command}` ({date})" for (command, date), nodes in groups.items()
        )
        + "."
    )


def _load(meta: dict) -> str:
    """The run's 1-minute load average before and after, when recorded (older runs lack it)."""
    if meta.get("load_average_before") is None:
        return ""
    return f" Load average {meta['load_average_before']} before, {meta.get('load_average_after', '?')} after."


def run_markdown(run: dict) -> list[str]:
    meta, levels = run["meta"], run["levels"]
    fraction = meta.get("fraction", 1.0)
    who = (
        "every node trains every round"
        if fraction == 1.0
        else f"fraction-train {fraction}: a seeded {fraction:.0%} of the nodes trains each round (sampling)"
    )
    lines = [
        f"## {who}",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs, {meta['memory_gib']} GiB), model "
        f"{meta['model']}, {meta['examples']} synthetic reviews per node, {meta['rounds']} rounds, no federated "
        f"evaluation. {_commands(levels, meta)}" + _load(meta) + (f" Note: {meta['note']}" if meta.get("note") else ""),
        "",
        "| SuperNodes | trained per round | all online after (s) | round seconds (median; each) | bytes up / round | "
        "bytes down / round (round 1; later) | SuperLink CPU s, whole level (+ ServerApp) | "
        "SuperLink peak RSS MiB (+ ServerApp) | idle cost per node, MiB: RSS (PSS); MemAvailable drop | "
        "flwr-clientapp alive at once (peak) | flwr-clientapp peak RSS each, MiB | RSS of everything, peak MiB | "
        "MemAvailable GiB: before / idle / lowest | result |",
        "|---:|---|---:|---|---:|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    lines += [_level_row(lv) for lv in levels]
    broken = [lv for lv in levels if lv.get("broken")]
    if broken:
        lines += ["", "Why levels broke (from the level's logs and the memory guard):", ""]
        for lv in broken:
            where = lv.get("last_round_started")
            errors = _errors_text(lv.get("log_errors") or {}, lv["nodes"])
            lines.append(
                f"- {lv['nodes']} nodes: {lv['broken']}; last round the ServerApp started: "
                f"{where if where is not None else 'none'}; logs say: "
                f"`{lv.get('broken_why') or 'nothing (not captured)'}`" + (f". {errors}." if errors else "")
            )
    ok = [lv for lv in levels if not lv.get("skipped") and not lv.get("broken") and lv.get("round_seconds")]
    if ok:
        lines += [
            "",
            "Per message, from the levels that completed (messages = the train messages and the one "
            "partition query per node before round 1):",
            "",
        ]
        for lv in ok:
            messages = sum(lv["clients_trained"]) + lv["nodes"]
            lines.append(
                f"- {lv['nodes']} nodes: during the run (after registration) flower-superlink used "
                f"{lv['superlink_run_cpu_s']:.1f} CPU s = {lv['superlink_run_cpu_s'] / messages * 1000:.0f} ms per "
                f"message ({messages}), with the ServerApp {lv['superlink_tree_run_cpu_s']:.1f} s = "
                f"{lv['superlink_tree_run_cpu_s'] / messages * 1000:.0f} ms; a round took "
                f"{lv['round_seconds_median']:.1f} s (median). flower-superlink kept "
                f"{lv['superlink_run_cpu_s'] / lv['run_seconds']:.3f} cores busy during the run, "
                f"{lv['superlink_idle_cores']:.3f} with the {lv['nodes']} nodes connected and idle."
            )
    return lines


def markdown(runs: list[dict]) -> str:
    lines = [
        "# One SuperLink under load (SuperNodes as processes on loopback)",
        "",
        "SuperLink + ServerApp = flower-superlink + flwr-serverapp (RSS: the sum of their peaks); CPU = user + "
        "system seconds over the whole level. Idle cost per node: with all N nodes connected and no run, the RSS "
        "(and PSS, shared pages split) of the flower-supernode processes and their flower-superexec launchers "
        "divided by N, and the machine's MemAvailable before the level minus with the N nodes idle, divided by N "
        "(other jobs on the machine move it too). Every flwr-clientapp is a fresh process per message "
        "(train, and the one partition query each node gets before round 1).",
        "",
    ]
    for run in runs:
        lines += run_markdown(run) + [""]
    return "\n".join(lines)
