"""The run report: report.json (config, rounds, final), report.md (a table), and two PNG plots.

Byte counts come from the TrafficMeter, i.e. from the serialized messages (see server/traffic.py).
Per round: the train and evaluate traffic of that round; the final evaluation is reported apart.
With secure aggregation the per-client train figures include its stage messages.
"""

import json
import math
from dataclasses import asdict
from pathlib import Path
from statistics import median

from server.aggregators import privacy_spent
from server.strategy import LoraXSStrategy
from server.traffic import PhaseTraffic, TrafficMeter
from shared.federation.run_config import FederationConfig

SECAGG_PHASE = "train.secagg"  # the message types of secure aggregation's stages 2-4
REPORT_JSON, REPORT_MD = "report.json", "report.md"
ACCURACY_PLOT, BYTES_PLOT = "accuracy_per_round.png", "bytes_per_round.png"


def build_report(
    config: FederationConfig,
    strategy: LoraXSStrategy,
    meter: TrafficMeter,
    global_rounds: dict[int, dict],
    final_clients: list,
    adapter_bytes: int,
    basis_bytes: int,
    wall_seconds: float,
) -> dict:
    rounds = [
        _round_entry(r, strategy, meter, global_rounds.get(r, {})) for r in range(1, config.num_server_rounds + 1)
    ]
    final = _final_entry(config, rounds, final_clients)
    train = _sum(p for (_, kind), p in meter.phases.items() if kind == "train")
    stages = _sum(p for (_, kind), p in meter.phases.items() if kind.startswith(SECAGG_PHASE))
    final_phase = _sum(p for (_, kind), p in meter.phases.items() if kind == "final")
    everything = _sum(meter.phases.values())
    final.update(
        {
            "adapter_payload_bytes": adapter_bytes,
            "basis_payload_bytes": basis_bytes,
            "bytes_up_per_client_per_round": _mean(train.bytes_up + stages.bytes_up, train.replies_up),
            "bytes_down_per_client_per_round": _mean(
                train.bytes_down + stages.bytes_down - train.basis_bytes_down, train.messages_down
            ),
            "basis_bytes_per_client": _mean(everything.basis_bytes_down, everything.bases_sent),
            "bytes_up_total": everything.bytes_up,
            "bytes_down_total": everything.bytes_down,
            "basis_bytes_down_total": everything.basis_bytes_down,
            "final_evaluation_bytes_down": final_phase.bytes_down,
            "final_evaluation_bytes_up": final_phase.bytes_up,
            "bases_sent": everything.bases_sent,
            "factors_derived": len(meter.nodes_derived),  # clients, each once (a resumed node may derive again)
            "factors_shipped": everything.bases_sent,
            "derivations": everything.bases_derived,
            "recipes_sent": everything.recipes_sent,
            "clients_reached": len(meter.nodes_contacted),
            "max_bases_per_client": max(meter.bases_per_node.values(), default=0),
            "wall_seconds": round(wall_seconds, 1),
            "strategy": config.strategy,
        }
    )
    if config.dp != "none":
        spent = privacy_spent(strategy.aggregator) if strategy.aggregator is not None else None
        final["privacy"] = {
            "dp": config.dp,
            "noise_multiplier": config.dp_noise_multiplier,
            "clipping_norm": config.dp_clipping_norm,
            "epsilon": spent["epsilon"] if spent else None,
            "delta": spent["delta"] if spent else config.dp_delta,
            "releases": spent["releases"] if spent else None,
        }
    return {"config": config.to_run_config(), "rounds": rounds, "final": final}


def _round_entry(server_round: int, strategy: LoraXSStrategy, meter: TrafficMeter, measured: dict) -> dict:
    stats = strategy.stats.get(server_round)
    train = meter.phases.get((server_round, "train"), PhaseTraffic())
    stages = _sum(p for (r, kind), p in meter.phases.items() if r == server_round and kind.startswith(SECAGG_PHASE))
    both = _sum(p for (r, kind), p in meter.phases.items() if r == server_round and kind != "final")
    entry = {
        "round": server_round,
        "clients_trained": stats.clients_trained if stats else 0,
        "examples_trained": stats.examples_trained if stats else 0,
        "median_update_norm": float(median(stats.update_norms)) if stats and stats.update_norms else None,
        "bytes_up": both.bytes_up,
        "bytes_down": both.bytes_down,
        "basis_bytes_down": both.basis_bytes_down,
        "accuracy_global": measured.get("accuracy"),
        "loss_global": measured.get("loss"),
        "bases_sent": both.bases_sent,
        "factors_derived": both.bases_derived,
        "factors_shipped": both.bases_sent,
        "bases_resent": stats.bases_resent if stats else 0,
        "rejected_updates": stats.rejected_updates if stats else 0,
        "clipped_weights": stats.clipped_weights if stats else 0,
        "failures": dict(stats.failures) if stats else {},
        "skipped": stats.skipped if stats else "",
        "bytes_up_per_client": _mean(train.bytes_up + stages.bytes_up, train.replies_up),
        "bytes_down_per_client": _mean(
            train.bytes_down + stages.bytes_down - train.basis_bytes_down, train.messages_down
        ),
        "seconds": round(measured["seconds"], 2) if "seconds" in measured else None,
    }
    secure = strategy.secure.rounds.get(server_round) if strategy.secure is not None else None
    if secure is not None:  # the per-client figures above include the stage messages
        entry["secure_aggregation"] = {
            **asdict(secure),
            "stage_bytes_up": stages.bytes_up,
            "stage_bytes_down": stages.bytes_down,
        }
    clients = strategy.evaluate_replies.get(server_round)
    if clients:
        entry["clients_evaluated"] = len(clients)
        entry["accuracy_global_clients"] = _weighted(clients, "accuracy-global")
        if "accuracy-personal" in clients[0]:
            entry["accuracy_personalized"] = _weighted(clients, "accuracy-personal")
    return entry


def _final_entry(config: FederationConfig, rounds: list[dict], clients: list) -> dict:
    last = rounds[-1]
    final = {
        "accuracy_global": last["accuracy_global"],
        "loss_global": last["loss_global"],
        "clients_final_evaluation": len(clients),
    }
    if not clients:
        return final
    personal = config.personalize == "finetune"
    final["accuracy_global_clients"] = _weighted(clients, "accuracy-global")
    if final["accuracy_global"] is None:  # no server-side held-out set (deployment)
        final["accuracy_global"] = final["accuracy_global_clients"]
    if personal:
        final["accuracy_personalized"] = _weighted(clients, "accuracy-personal")
    if config.scenario == "concept-shift":
        groups = {
            "shifted": [c for c in clients if c["shifted"]],
            "unshifted": [c for c in clients if not c["shifted"]],
        }
        for name, members in groups.items():
            final[f"clients_{name}"] = len(members)
            final[f"accuracy_global_{name}"] = _weighted(members, "accuracy-global")
            if personal:
                final[f"accuracy_personalized_{name}"] = _weighted(members, "accuracy-personal")
    return final


def _sum(phases) -> PhaseTraffic:
    total = PhaseTraffic()
    for phase in phases:
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(phase, name))
    return total


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 1) if count else None


def _weighted(clients: list, key: str) -> float | None:
    weights = sum(c["num-examples"] for c in clients)
    if not weights:
        return None
    return sum(c[key] * c["num-examples"] for c in clients) / weights


def write_report(out_dir: Path, report: dict) -> None:
    from server.plots import plot_accuracy, plot_bytes  # matplotlib only when writing

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / REPORT_MD).write_text(report_markdown(report))
    plot_accuracy(report, out_dir / ACCURACY_PLOT)
    plot_bytes(report, out_dir / BYTES_PLOT)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report_markdown(report: dict) -> str:
    config, final = report["config"], report["final"]
    lines = [
        "# Federated LoRA-XS run",
        "",
        f"model `{config['model']}`, dataset `{config['dataset']}` ({config['partition']} partition), "
        f"{config['num-clients']} clients, {config['num-server-rounds']} rounds, fraction "
        f"{config['fraction-train']}, rank {config['rank']}, update dtype {config['update-dtype']}, "
        f"personalize {config['personalize']}, scenario {config['scenario']}, seed {config['seed']}, "
        f"factors {config.get('basis-delivery', 'ship')} ({config.get('basis-dtype', 'fp32')})",
        "",
        "| round | clients | accuracy (global) | bytes up | bytes down | of which basis | factors derived / shipped | up / client |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['round']} | {r['clients_trained']} | {_fmt(r['accuracy_global'])} | "
            f"{_fmt(r['bytes_up'])} | {_fmt(r['bytes_down'])} | {_fmt(r['basis_bytes_down'])} | "
            f"{r.get('factors_derived', 0)} / {r.get('factors_shipped', r['bases_sent'])} | "
            f"{_fmt(r['bytes_up_per_client'])} |"
        )
    lines += ["", "## Final", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in final.items()]
    return "\n".join(lines) + "\n"
