"""Bytes per client per round and per participation: LoRA-XS vs PEFT LoRA vs full fine-tuning.

    python -m benchmarks.bytes_per_round            # LoRA-XS r=16 fp32/fp16, LoRA r=1,2,4,8, full
    python -m benchmarks.bytes_per_round --quick    # the same without full fine-tuning

Every number is `server/traffic.py:wire_bytes` of a real Flower Message built as the ServerApp
and the ClientApp build theirs (benchmarks/federated_methods.py): the train message down, the
reply up, and for LoRA-XS with shipped factors the "basis" record on a node's first message.
PEFT LoRA travels the FlowerTune way (every lora_A and lora_B + the head, one array each), full
fine-tuning FedAvg sends every parameter. One participation = the first train message (factors
included) + the reply; ten = factors once + ten rounds. LoRA-XS with factors derived on the
device is measured by `benchmarks.participation_bytes`.
Writes benchmarks/results/bytes_per_round.json and .md.
"""

import argparse
from pathlib import Path

from benchmarks.federated_methods import build, round_bytes
from benchmarks.result_files import RESULTS, command_line, goal, machine_now, write_result

NAME = "bytes_per_round"
LABELS = ["negative", "positive"]
GOAL_RATIO = 25.0  # LoRA-XS at least this many times below LoRA r=8 per round


def measure(configs: list[tuple[str, int, str]]) -> list[dict]:
    rows, models = [], {}
    for method, rank, dtype in configs:
        key = (method, rank)
        if key not in models:
            models[key] = build(method, rank, LABELS)
        federated = models[key]
        b = round_bytes(federated, dtype)
        rows.append(
            {
                "method": method,
                "rank": rank,
                "update_dtype": dtype,
                "name": f"{federated.name} {dtype}",
                "trainable_parameters": federated.trainable_parameters(),
                "payload_bytes": b.payload,
                "up_per_round": b.up,
                "down_per_round": b.down,
                "factors_once": b.factors,
                "one_participation": b.factors + b.down + b.up,
                "ten_participations": b.factors + 10 * (b.down + b.up),
            }
        )
        if method == "full":
            del models[key]  # 90 MB of weights: not kept
    return rows


def goals(rows: list[dict]) -> list[dict]:
    lora8 = next((r for r in rows if r["method"] == "lora" and r["rank"] == 8), None)
    found = []
    for row in (r for r in rows if r["method"] == "loraxs"):
        if lora8 is None:
            continue
        ratio = lora8["up_per_round"] / row["up_per_round"]
        found.append(
            goal(
                f"{row['name']}: >= {GOAL_RATIO:.0f}x below PEFT LoRA r=8 fp32 per round (upload)",
                f"{ratio:.1f}x ({row['up_per_round']:,} B vs {lora8['up_per_round']:,} B)",
                ratio >= GOAL_RATIO,
                "LoRA-XS's update is 24 r x r matrices + the head; at this rank the head and the per-array "
                "message overhead are a fixed share",
            )
        )
    return found


def markdown(document: dict) -> str:
    rows = document["rows"]
    lora8 = next((r for r in rows if r["method"] == "lora" and r["rank"] == 8), None)
    lines = [
        "| method | trainable params | update payload B | up / round B | down / round B | factors once B "
        "| one participation B | ten participations B | LoRA r=8 up / this up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{lora8['up_per_round'] / r['up_per_round']:.3g}x" if lora8 else "—"
        lines.append(
            f"| {r['name']} | {r['trainable_parameters']:,} | {r['payload_bytes']:,} | "
            f"{r['up_per_round']:,} | {r['down_per_round']:,} | {r['factors_once']:,} | "
            f"{r['one_participation']:,} | {r['ten_participations']:,} | {ratio} |"
        )
    lines += [
        "",
        "Counted by `server/traffic.py:wire_bytes` on real Flower Messages (MiniLM, 2 labels; "
        "arrays with distinct values, as after training). Factors are shipped on a node's first "
        "message (`basis-delivery = ship`); LoRA-XS with derived factors: see `participation_bytes`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip full fine-tuning (90 MB messages)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA-XS rank (the default federation's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    machine = machine_now()
    configs = [("loraxs", args.rank, "fp32"), ("loraxs", args.rank, "fp16")]
    configs += [("lora", r, "fp32") for r in (1, 2, 4, 8)]
    if not args.quick:
        configs.append(("full", 0, "fp32"))
    rows = measure(configs)
    document = {
        "command": command_line(f"benchmarks.{NAME}", argv),
        "machine": machine,
        "rows": rows,
        "goals": goals(rows),
    }
    text = markdown(document)
    write_result(args.out, NAME, document, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
