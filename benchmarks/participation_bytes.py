"""Bytes one participating client moves (download + upload, factors included), for one
participation and for ten: LoRA-XS with the factors derived on the device (basis-delivery derive)
or shipped (fp32 / fp16 / bf16), against PEFT LoRA r=8 on the same modules.

LoRA-XS: real federations of one client on the packaged MiniLM (rank 16), the real ServerApp and
ClientApp code on the in-process Grid (simulations/in_process.py), so every byte comes from
the run's report (server/traffic.py:wire_bytes on the serialized messages): participation 1 is
round 1, ten participations are rounds 1-10. PEFT LoRA r=8: `peft` injects LoRA into the same
MiniLM modules; its trainable state (every lora_A (8, in), lora_B (out, 8) and the head) travels
one array per tensor (as FlowerTune sends it) in messages built like ours and counted by the same
`wire_bytes`. lora_B starts at zero in PEFT (which deflates to almost nothing), so it is filled
with seeded N(0, 1e-3) values, as after training. Writes <out>/participation_bytes.{json,md}
(default benchmarks/results/).

    python -m benchmarks.participation_bytes [--rounds 10] [--out DIR]
"""

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.result_files import RESULTS, command_line, footer, goal, goal_lines, machine_now, write_result
from benchmarks.security_overhead import write_reviews
from client.app import make_client_app
from server.federation import run_federation
from server.traffic import wire_bytes
from shared.base_models import DEFAULT_MODEL, load_base_model
from shared.federation.protocol import ARRAYS, CONFIG, METRICS
from shared.federation.run_config import FederationConfig
from shared.loraxs.config import BERT_TARGETS
from shared.loraxs.model import head_parameter_names
from simulations.in_process import InProcessGrid

MODES = {
    "LoRA-XS derive": {"basis_delivery": "derive"},
    "LoRA-XS ship fp32": {"basis_delivery": "ship", "basis_dtype": "fp32"},
    "LoRA-XS ship fp16": {"basis_delivery": "ship", "basis_dtype": "fp16"},
    "LoRA-XS ship bf16": {"basis_delivery": "ship", "basis_dtype": "bf16"},
}
LORA_RANK = 8


def loraxs_bytes(config: FederationConfig) -> dict:
    """One client, every round: its bytes after one participation and after all of them."""
    report = run_federation(InProcessGrid(make_client_app(config), 1), config)
    rounds, final = report["rounds"], report["final"]
    assert all(r["clients_trained"] == 1 for r in rounds), "a round lost its only client"
    return {
        "one": rounds[0]["bytes_down"] + rounds[0]["bytes_up"],
        "one_down": rounds[0]["bytes_down"],
        "one_up": rounds[0]["bytes_up"],
        "all": final["bytes_down_total"] + final["bytes_up_total"],
        "factors_derived": final["factors_derived"],
        "factors_shipped": final["factors_shipped"],
        "factor_bytes": final["basis_bytes_down_total"],
    }


def lora_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """PEFT LoRA r=8 on MiniLM's LoRA-XS target modules: its trainable tensors + the head."""
    from peft import LoraConfig, inject_adapter_in_model

    model = load_base_model(DEFAULT_MODEL, "seq-cls", 2, seed)
    inject_adapter_in_model(
        LoraConfig(r=LORA_RANK, lora_alpha=16, lora_dropout=0.0, target_modules=list(BERT_TARGETS)), model
    )
    head = set(head_parameter_names(model))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.named_parameters():
        if "lora_" in name or name in head:
            value = param.detach().clone()
            if "lora_B" in name:  # zero at init; trained values do not deflate away
                value = torch.randn(value.shape, generator=generator) * 1e-3
            state[name] = value
    return state


def lora_participation_bytes(state: dict[str, torch.Tensor], server_round: int) -> tuple[int, int]:
    """(down, up) of one PEFT LoRA participation: the global A, B and head down, the trained up."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    arrays = ArrayRecord({k: Array(v.float().numpy()) for k, v in state.items()})
    down = Message(
        RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({"server-round": server_round})}),
        message_type=MessageType.TRAIN,
        dst_node_id=1001,
    )
    down.metadata.__dict__["_message_id"] = "1" * 64
    up = Message(
        RecordDict({ARRAYS: arrays, METRICS: MetricRecord({"num-examples": 16, "train-loss": 0.5})}), reply_to=down
    )
    return wire_bytes(down), wire_bytes(up)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="participations of the one client")
    parser.add_argument("--examples", type=int, default=40, help="reviews of the one client")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    machine = machine_now()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_reviews(Path(tmp) / "reviews", args.examples)
        base = FederationConfig(
            num_clients=1,
            num_server_rounds=args.rounds,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            final_eval_fraction=0.0,
            dataset=str(data),
            partition="iid",
            batch_size=16,
            max_length=32,
            eval_max_examples=8,
            out_dir=str(Path(tmp) / "run"),
        )
        for name, changes in MODES.items():
            started = time.perf_counter()
            results[name] = loraxs_bytes(replace(base, **changes, out_dir=str(Path(tmp) / name.replace(" ", "-"))))
            results[name]["seconds"] = round(time.perf_counter() - started, 1)
    state = lora_state()
    per_round = [lora_participation_bytes(state, r) for r in range(1, args.rounds + 1)]
    results[f"PEFT LoRA r={LORA_RANK}"] = {
        "one": sum(per_round[0]),
        "one_down": per_round[0][0],
        "one_up": per_round[0][1],
        "all": sum(d + u for d, u in per_round),
        "trainable_values": sum(v.numel() for v in state.values()),
    }
    lora = results[f"PEFT LoRA r={LORA_RANK}"]
    for row in results.values():
        row["one_vs_lora"] = round(row["one"] / lora["one"], 4)
        row["all_vs_lora"] = round(row["all"] / lora["all"], 4)
    derive = results["LoRA-XS derive"]
    result = {
        "command": command_line("benchmarks.participation_bytes", argv),
        "machine": machine,
        "meta": {
            "model": DEFAULT_MODEL,
            "loraxs_rank": base.rank,
            "lora_rank": LORA_RANK,
            "targets": list(BERT_TARGETS),
            "participations": args.rounds,
            "update_dtype": base.update_dtype,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "lora_counted": "peft-injected MiniLM state in messages counted by server/traffic.py:wire_bytes",
        },
        "bytes": results,
        "goals": [
            goal(
                "LoRA-XS derive <= 1/20 of PEFT LoRA r=8 per participation (down + up)",
                f"{derive['one']:,} B vs {lora['one']:,} B (1/{lora['one'] / derive['one']:.1f})",
                derive["one"] * 20 <= lora["one"],
                "the head and the messages' fixed overhead travel whatever the rank",
            )
        ],
    }
    write_result(args.out, "participation_bytes", result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    meta = result["meta"]
    n = meta["participations"]
    lines = [
        "# Bytes per participating client (download + upload, factors included)",
        "",
        f"{meta['model']}; LoRA-XS rank {meta['loraxs_rank']} (update dtype {meta['update_dtype']}) vs "
        f"PEFT LoRA r={meta['lora_rank']} on the same modules ({', '.join(meta['targets'])}); bytes as "
        "server/traffic.py counts the serialized Flower messages.",
        "",
        f"| method | 1 participation (down + up) | vs LoRA | {n} participations | vs LoRA |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["bytes"].items():
        lines.append(
            f"| {name} | {row['one']:,} ({row['one_down']:,} + {row['one_up']:,}) | "
            f"{row['one_vs_lora']:.4f} (1/{1 / row['one_vs_lora']:.1f}) | {row['all']:,} | "
            f"{row['all_vs_lora']:.4f} |"
        )
    lines += ["", *goal_lines(result["goals"]), "", footer(result)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
