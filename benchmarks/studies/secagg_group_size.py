"""Secure aggregation's cost as the group grows: bytes per client per round and CPU, for groups of
n clients, on this project's SecAgg (shared/crypto/secagg, driven as server/secure_rounds.py does).

    python -m benchmarks.studies.secagg_group_size [--sizes 5 10 25 50 100 200] [--values 6914]
                                                   [--examples 100] [--max-weight 10000] [--out DIR]

Every client of a group shares keys with every other one, so its stage messages grow with n - 1;
the server's work grows with n^2. Bytes are measured on the records the Message-API stages send
(server/traffic.py `wire_bytes`: Flower's deflated objects + ids), without the adapter itself:
  setup       the round's setup in the train message (participants, threshold, ...), down
  keys        stage 1 keys in the train reply, up
  directory   stage 2 key directory, down;   boxes  stage 2 reply (one box per peer), up
  inbox       stage 3 boxes from the peers, down;  masked  stage 3 masked vector (d + 1 uint32), up
  request     stage 4 survivors / dropped, down;  shares  stage 4 reply (one share per peer), up
CPU: the median client's seconds over its four stages, and the server's seconds, in one process.
The quantization bound is `max_mean_error` (shared/crypto/secagg/params.py) with every client
weighing `--examples`. --values 6914 = the MiniLM rank-16 adapter: 24 x 16 x 16 r x r values +
770 head values (adapter_payload_bytes 27,656 = 6,914 x 4 in benchmarks/results/simulation_default).
Writes <out>/secagg_group_size.{json,md} (default benchmarks/studies/results/).
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from benchmarks.result_files import STUDY_RESULTS, command_line, footer, machine_now, write_result
from server.secure_rounds import MODULUS_BITS
from server.traffic import wire_bytes
from shared.crypto.secagg.client import SecAggClient
from shared.crypto.secagg.params import SecAggParams, max_mean_error
from shared.crypto.secagg.server import SecAggServer
from shared.federation.protocol import CONFIG
from shared.federation.secure_messages import MASKED, MASKED_Y, SECAGG, WEIGHT, node_keyed, setup_config

UP = ("keys", "boxes", "masked", "shares")
DOWN = ("setup", "directory", "inbox", "request")
FIRST_NODE = 2**62  # node ids are uint64; large ones, as Flower draws them


def group_round(n: int, values: int, examples: int, max_weight: int, seed: int = 0) -> dict:
    """One secure round of n clients; bytes of one (the median) client per stage, CPU, the bound."""
    params = SecAggParams(
        participants=tuple(FIRST_NODE + 7919 * i for i in range(n)),
        threshold=n // 2 + 1,
        vector_length=values,
        max_weight=max_weight,
        modulus_bits=MODULUS_BITS,
        run_id=1,
        server_round=1,
    )
    rng = np.random.default_rng(seed)
    xs = {i: rng.normal(0, 0.01, values) for i in params.participants}  # (d,) deltas
    sizes = {stage: [] for stage in UP + DOWN}
    cpu = {i: 0.0 for i in params.participants}

    def timed(node, work):
        started = time.process_time()
        out = work()
        cpu[node] += time.process_time() - started
        return out

    server_cpu = time.process_time()
    server = SecAggServer(params)
    setup = ConfigRecord(setup_config(params))
    server_cpu = time.process_time() - server_cpu
    clients = {i: SecAggClient(params, i) for i in params.participants}
    key_replies = {i: timed(i, clients[i].keys) for i in params.participants}
    started = time.process_time()
    for i, reply in key_replies.items():
        server.receive_keys(i, reply)
    directory = node_keyed(server.directory())
    server_cpu += time.process_time() - started
    replies = {i: timed(i, lambda c=clients[i]: c.share_keys(dict(directory))) for i in params.participants}
    started = time.process_time()
    for i, reply in replies.items():
        server.receive_shares(i, reply)
    inboxes = server.inboxes()
    server_cpu += time.process_time() - started
    masked = {
        i: timed(i, lambda i=i: clients[i].masked_input(inboxes[i], xs[i], examples)) for i in params.participants
    }
    started = time.process_time()
    for i, y in masked.items():
        server.receive_masked(i, y)
    request = server.unmask_request()
    server_cpu += time.process_time() - started
    reveals = {i: timed(i, lambda i=i: clients[i].reveal(request)) for i in request["survivors"]}
    started = time.process_time()
    for i, reply in reveals.items():
        server.receive_reveal(i, reply)
    weighted_sum, total_weight, summed = server.result()
    server_cpu += time.process_time() - started

    plain = sum(min(examples, max_weight) * xs[i] for i in params.participants) / total_weight
    error = float(np.abs(weighted_sum / total_weight - plain).max())
    request_record = ConfigRecord({k: [str(n) for n in v] for k, v in request.items()})
    for i in params.participants:
        round_config = ConfigRecord({"server-round": 1})
        sizes["setup"].append(wire_bytes(setup))
        sizes["keys"].append(wire_bytes(RecordDict({SECAGG: ConfigRecord(key_replies[i])})))
        sizes["directory"].append(wire_bytes(RecordDict({CONFIG: round_config, SECAGG: directory})))
        sizes["boxes"].append(wire_bytes(RecordDict({SECAGG: ConfigRecord(replies[i])})))
        sizes["inbox"].append(
            wire_bytes(
                RecordDict(
                    {CONFIG: ConfigRecord({"server-round": 1, WEIGHT: examples}), SECAGG: node_keyed(inboxes[i])}
                )
            )
        )
        sizes["masked"].append(wire_bytes(RecordDict({MASKED: ArrayRecord({MASKED_Y: Array(masked[i])})})))
        sizes["request"].append(wire_bytes(RecordDict({CONFIG: round_config, SECAGG: request_record})))
        sizes["shares"].append(wire_bytes(RecordDict({SECAGG: ConfigRecord(reveals[i])})))
    per_client = {stage: statistics.median(v) for stage, v in sizes.items()}
    return {
        "n": n,
        "summed": len(summed),
        "bytes_per_client": per_client,
        "up_bytes_per_client": sum(per_client[s] for s in UP),
        "down_bytes_per_client": sum(per_client[s] for s in DOWN),
        "masked_vector_bytes": per_client["masked"],
        "client_cpu_s_median": round(statistics.median(cpu.values()), 4),
        "server_cpu_s": round(server_cpu, 4),
        "quantization_bits": params.quantization_bits,
        "max_mean_error_bound": max_mean_error(params, len(summed), total_weight),
        "measured_max_error": error,
    }


def markdown(document: dict) -> str:
    rows, meta = document["groups"], document
    lines = [
        "# Secure aggregation cost by group size (bytes per client per round, CPU)",
        "",
        f"d = {meta['values']} values per client, every client "
        f"weighs {meta['examples']} examples, max weight {meta['max_weight']}, modulus 2^{MODULUS_BITS}. "
        "Bytes exclude the adapter's own train message; 'masked' is the "
        "masked adapter itself (it replaces the plain upload).",
        "",
        "| n (group) | up B / client (keys + boxes + masked + shares) | down B / client (setup + directory + inbox + request) "
        "| of which grow with n: boxes + shares up, directory + inbox + setup down | client CPU s | server CPU s "
        "| value bits | error bound of the mean | measured error |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["bytes_per_client"]
        lines.append(
            f"| {r['n']} | {r['up_bytes_per_client']:,.0f} | {r['down_bytes_per_client']:,.0f} | "
            f"{b['boxes'] + b['shares']:,.0f} up, {b['directory'] + b['inbox'] + b['setup']:,.0f} down | "
            f"{r['client_cpu_s_median']:.3f} | {r['server_cpu_s']:.2f} | {r['quantization_bits']} | "
            f"{r['max_mean_error_bound']:.2e} | {r['measured_max_error']:.2e} |"
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        dn = b["n"] - a["n"]
        up = (b["up_bytes_per_client"] - a["up_bytes_per_client"]) / dn
        down = (b["down_bytes_per_client"] - a["down_bytes_per_client"]) / dn
        exponent = math.log(b["server_cpu_s"] / a["server_cpu_s"]) / math.log(b["n"] / a["n"])
        lines += [
            "",
            f"Per extra group member, between n = {a['n']} and {b['n']}: {up:.0f} B more up and {down:.0f} B more "
            f"down per client per round; the server's CPU grew as n^{exponent:.2f} between them.",
        ]
    return "\n".join([*lines, "", footer(document)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200])
    parser.add_argument("--values", type=int, default=6914, help="d, values per client (default: MiniLM rank 16)")
    parser.add_argument("--examples", type=int, default=100, help="each client's weight (num-examples)")
    parser.add_argument("--max-weight", type=int, default=10_000, help="max-client-examples")
    parser.add_argument("--out", type=Path, default=STUDY_RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if min(args.sizes) < 2:
        raise SystemExit("--sizes: a group has at least 2 clients")
    machine = machine_now()
    rows = []
    for n in sorted(args.sizes):
        rows.append(group_round(n, args.values, args.examples, args.max_weight))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "bytes_per_client"}), flush=True)
    document = {
        "command": command_line("benchmarks.studies.secagg_group_size", argv),
        "machine": machine,
        "values": args.values,
        "examples": args.examples,
        "max_weight": args.max_weight,
        "groups": rows,
    }
    write_result(args.out, "secagg_group_size", document, markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
