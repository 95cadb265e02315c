"""`flower-simulation`: a whole federated LoRA-XS run on simulated clients (Flower + Ray).

    flower-simulation --num-clients 100            # packaged MiniLM, rotten-tomatoes, natural
    flower-simulation --num-clients 20 --rounds 5 --personalize finetune --scenario concept-shift

Defaults come from `FederationConfig`, i.e. from `[tool.flwr.app.config]`, so this command and
`flwr run .` run the same federation. Writes report.json, report.md, two plots,
global_adapter.safetensors and basis.safetensors to --out (default runs/<timestamp>).
Bad input: one line on stderr, exit code 2. Nothing it starts outlives it.
"""

import os

# Before anything imports tqdm (it reads this once): no bars from datasets / flwr-datasets here
# or in the Ray workers, which inherit it. Our own bar over rounds passes disable=False.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

from shared.federation.node_data import held_out_union  # noqa: E402
from server.federation import resolve_out_dir  # noqa: E402
from server.report import REPORT_MD, write_report  # noqa: E402
from shared.federation.run_config import PERSONALIZE, SCENARIOS, UPDATE_DTYPES, FederationConfig  # noqa: E402
from shared.data.partition import PARTITIONS  # noqa: E402
from shared.errors import LoraXSError  # noqa: E402
from shared.models import canonical_model_id, load_tokenizer  # noqa: E402
from simulations.quiet_logs import quiet_logs  # noqa: E402

USER_ERROR_EXIT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = FederationConfig()
    parser = argparse.ArgumentParser(
        prog="flower-simulation",
        description="Federated LoRA-XS fine-tuning on simulated clients (Flower, Ray backend).",
    )
    parser.add_argument("--num-clients", type=int, default=d.num_clients, help="simulated clients (%(default)s)")
    parser.add_argument("--rounds", type=int, default=d.num_server_rounds, help="federated rounds (%(default)s)")
    parser.add_argument("--fraction", type=float, default=d.fraction_train,
                        help="share of clients trained per round, in (0, 1] (%(default)s)")
    parser.add_argument("--partition", choices=PARTITIONS, default=d.partition,
                        help="how the dataset is split across clients (%(default)s)")
    parser.add_argument("--alpha", type=float, default=d.dirichlet_alpha,
                        help="Dirichlet concentration for --partition dirichlet (%(default)s)")
    parser.add_argument("--dataset", default=d.dataset, metavar="NAME|DIR",
                        help="rotten-tomatoes or a folder of *.jsonl/*.csv files (%(default)s)")
    parser.add_argument("--model", default=d.model, help="base model id or folder (%(default)s)")
    parser.add_argument("--rank", type=int, default=d.rank, help="LoRA-XS rank r (%(default)s)")
    parser.add_argument("--personalize", choices=PERSONALIZE, default=d.personalize,
                        help="finetune: clients also keep a personal adapter (%(default)s)")
    parser.add_argument("--scenario", choices=SCENARIOS, default=d.scenario,
                        help="concept-shift: a seeded 20%% of clients flip their labels (%(default)s)")
    parser.add_argument("--update-dtype", choices=UPDATE_DTYPES, default=d.update_dtype,
                        help="precision of the adapter on the wire (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="(%(default)s)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/<timestamp>)")
    parser.add_argument("--run-config", metavar='"KEY=VALUE ..."', default="",
                        help="any other key of [tool.flwr.app.config], e.g. \"lr=0.004 personal-steps=5\"")
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="CPUs per simulated client; clients in parallel = CPUs / this (%(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> FederationConfig:
    """Defaults, then --run-config, then the named flags; the output folder resolved."""
    overrides = {}
    for item in shlex.split(args.run_config):
        key, sep, value = item.partition("=")
        if not sep:
            raise LoraXSError(f"--run-config expects KEY=VALUE items, got {item!r}")
        overrides[key.strip()] = value.strip()
    config = FederationConfig.from_run_config(overrides).with_overrides(
        num_clients=args.num_clients, num_server_rounds=args.rounds, fraction_train=args.fraction,
        partition=args.partition, dirichlet_alpha=args.alpha, dataset=args.dataset,
        model=args.model, rank=args.rank, personalize=args.personalize, scenario=args.scenario,
        update_dtype=args.update_dtype, seed=args.seed,
    )
    if args.client_cpus <= 0:
        raise LoraXSError(f"--client-cpus must be > 0, got {args.client_cpus}")
    return replace(config, out_dir=str(resolve_out_dir(args.out or config.out_dir)))


def check_inputs(config: FederationConfig) -> None:
    """Fail before Ray starts: unknown model or dataset, more clients than partitions.
    (What it loads stays cached for the server in this process.)"""
    load_tokenizer(canonical_model_id(config.model))
    if config.dataset:
        held_out_union(config, config.eval_max_examples)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    try:
        config = build_config(args)
        with quiet_logs():
            check_inputs(config)
            from simulations.ray_simulation import run_ray_simulation  # Ray only once input is fine

            report = run_ray_simulation(config, args.client_cpus, progress=not args.no_progress)
        report["final"]["wall_seconds"] = round(time.perf_counter() - started, 1)  # with Ray start
        out_dir = resolve_out_dir(config.out_dir)
        write_report(out_dir, report)
    except LoraXSError as err:
        print(f"flower-simulation: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:  # Ray is already shut down; the ServerApp thread may still wait
        print("flower-simulation: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    print_summary(report, out_dir)
    return 0


def print_summary(report: dict, out_dir) -> None:
    final = report["final"]
    parts = [f"accuracy (global) {final['accuracy_global']:.4f}"] if final.get("accuracy_global") is not None else []
    for key in ("accuracy_personalized", "accuracy_global_shifted", "accuracy_personalized_shifted"):
        if final.get(key) is not None:
            parts.append(f"{key.removeprefix('accuracy_').replace('_', ' ')} {final[key]:.4f}")
    print("final: " + ", ".join(parts))
    print(f"per client per round: up {final['bytes_up_per_client_per_round']:,.0f} B, down "
          f"{final['bytes_down_per_client_per_round']:,.0f} B; factors {final['basis_bytes_per_client']:,.0f} B "
          f"sent {final['bases_sent']} times to {final['clients_reached']} clients")
    print(f"wall time {final['wall_seconds']:.0f} s; report: {out_dir / REPORT_MD}")


if __name__ == "__main__":
    sys.exit(main())
