"""`flower-simulation`: a whole federated LoRA-XS run on simulated clients (Flower + Ray).

    flower-simulation --num-clients 100            # packaged MiniLM, rotten-tomatoes, natural
    flower-simulation --num-clients 20 --rounds 5 --personalize finetune --scenario concept-shift

Defaults come from `FederationConfig`, i.e. from `[tool.flwr.app.config]`, so this command and
`flwr run .` run the same federation. Writes report.json, report.md, two plots,
global_adapter.safetensors and basis.safetensors to --out (default runs/<timestamp>).
Every field of `FederationConfig` is a flag (`--num-clients`, `--local-epochs`, ...), a few with
the short names the README uses (`--rounds`, `--fraction`, `--alpha`, `--out`); `--run-config`
takes any key too, and named flags win over it. Bad input: one line on stderr, exit code 1
(2: argparse's code for unknown or malformed flags).
Nothing it starts outlives it.
"""

import os

# Before anything imports tqdm (it reads this once): no bars from datasets / flwr-datasets here
# or in the Ray workers, which inherit it. Our own bar over rounds passes disable=False.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import shlex
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from server.checkpoint import Checkpoint
from server.report import REPORT_MD
from server.run_folder import check_run_folder, remove_unfinished_run, resolve_out_dir
from shared.base_models import canonical_model_id, load_tokenizer
from shared.cli import INTERRUPTED_EXIT, STOPPED_EXIT, refuse_blank_values, run_cli
from shared.errors import LoraXSError
from shared.federation.node_data import held_out_union
from shared.federation.run_config import CHOICES, FederationConfig
from simulations.quiet_logs import quiet_logs

SHORT_NAMES = {
    "num_server_rounds": "--rounds",
    "fraction_train": "--fraction",
    "dirichlet_alpha": "--alpha",
    "out_dir": "--out",
    "encrypt_updates": "--encrypt",
    "resume_from": "--resume",
}
METAVARS = {int: "N", float: "X", str: "TEXT", "model": "ID|DIR", "dataset": "NAME|DIR", "out_dir": "DIR"}
HELP = {
    "num_clients": "simulated clients",
    "num_server_rounds": "federated rounds",
    "fraction_train": "share of clients trained per round, in (0, 1]",
    "partition": "how the dataset is split across clients",
    "dirichlet_alpha": "Dirichlet concentration for --partition dirichlet",
    "dataset": "rotten-tomatoes or a folder of *.jsonl/*.csv files",
    "model": "base model id or folder",
    "rank": "LoRA-XS rank r",
    "personalize": "finetune: clients also keep a personal adapter",
    "scenario": "concept-shift: a seeded share of clients (shift-fraction) flip their labels",
    "update_dtype": "precision of the adapter on the wire",
    "basis_delivery": "derive: nodes derive the factors (reproducible SVD, fingerprint-checked; "
    "the factors are shipped only to a node that cannot); ship: always send them",
    "basis_dtype": "precision of the factors (everyone, server included, uses the rounded ones)",
    "out_dir": "output folder (default runs/<timestamp>)",
    "resume_from": "continue the run whose folder (checkpoint.safetensors) this is; same flags, --rounds may grow",
    "fail_rate": "share of client messages that crash, time out or answer garbage (seeded)",
    "round_timeout": "seconds the server waits for one round's replies",
    "strategy": "the aggregator inside the LoRA-XS layer (Flower's strategy of that name)",
    "dp": "Flower's fixed-clipping differential privacy, clipped on the server or the device",
    "malicious_fraction": "share of clients that poison every update (seeded; see --malicious-attack)",
    "encrypt_updates": "seal each update to the server's HPKE key (docs/security.md)",
    "server_key_file": "server private key file for --encrypt (created if missing)",
    "secure_aggregation": "the server learns only the sum of the updates (SecAgg+, docs/security.md)",
    "secagg_timeout": "seconds the server waits for each secure-aggregation stage",
    "secagg_clipping_range": "C: each client's delta x * weight / max-client-examples must lie in [-C, C]",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """One flag per FederationConfig field (kebab-case, as in [tool.flwr.app.config]); None =
    not given, so --run-config and the dataclass defaults decide."""
    parser = argparse.ArgumentParser(
        prog="flower-simulation",
        description="Federated LoRA-XS fine-tuning on simulated clients (Flower, Ray backend).",
    )
    defaults = FederationConfig()
    for field in fields(FederationConfig):
        flag = "--" + field.name.replace("_", "-")
        names = [SHORT_NAMES[field.name], flag] if field.name in SHORT_NAMES else [flag]
        default = getattr(defaults, field.name)
        shown = f" ({default})" if default != "" else ""
        if isinstance(default, bool):  # --encrypt / --no-encrypt-updates; None = not given
            parser.add_argument(
                *names,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=HELP.get(field.name, f"run-config key {flag[2:]}") + shown,
            )
            continue
        parser.add_argument(
            *names,
            dest=field.name,
            type=type(default),
            choices=CHOICES.get(field.name),
            metavar=None if field.name in CHOICES else METAVARS.get(field.name, METAVARS[type(default)]),
            help=HELP.get(field.name, f"run-config key {flag[2:]}").replace("%", "%%") + shown,
        )
    parser.add_argument(
        "--run-config",
        metavar='"KEY=VALUE ..."',
        default="",
        help='any key of [tool.flwr.app.config], e.g. "lr=0.004 personal-steps=5"',
    )
    parser.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="CPUs per simulated client; clients in parallel = CPUs / this (%(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the run an existing --out folder holds (default: refuse)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        default="",
        help="attach to this running Ray cluster (default: a private local Ray, "
        "whatever RAY_ADDRESS or /tmp/ray/ray_current_cluster say)",
    )
    args = parser.parse_args(argv)
    refuse_blank_values(parser, args)
    return args


def build_config(args: argparse.Namespace) -> FederationConfig:
    """Defaults, then --run-config, then the named flags; the output folder resolved."""
    overrides = {}
    try:
        items = shlex.split(args.run_config)
    except ValueError as err:  # an unbalanced quote
        raise LoraXSError(f"--run-config {args.run_config!r}: {err}") from None
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LoraXSError(f"--run-config expects KEY=VALUE items, got {item!r}")
        overrides[key.strip()] = value.strip()
    flags = {field.name: getattr(args, field.name) for field in fields(FederationConfig)}
    config = FederationConfig.from_run_config(overrides).with_overrides(**flags)
    if args.client_cpus <= 0:
        raise LoraXSError(f"--client-cpus must be > 0, got {args.client_cpus}")
    return replace(config, out_dir=str(resolve_out_dir(config.resume_from or config.out_dir)))


def check_inputs(config: FederationConfig, force: bool = False) -> None:
    """Fail before Ray starts: an output folder that is a file, not writable or holds a run
    (without --force / --resume), unknown model or dataset, more clients than partitions, labels
    client.run would refuse. (What it loads stays cached for the server in this process.)"""
    check_run_folder(Path(config.out_dir), force=force, resume=bool(config.resume_from))
    if config.resume_from:
        Checkpoint(Path(config.resume_from)).check_config(config)
    load_tokenizer(canonical_model_id(config.model))
    if config.dataset:
        held_out_union(config, config.eval_max_examples)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)

    def work() -> int:
        config = build_config(args)
        out_dir = Path(config.out_dir)
        created = not out_dir.exists()
        finished = False

        def unfinished() -> None:  # a stop or failure before the first checkpoint leaves no run folder
            said = remove_unfinished_run(out_dir, created)
            if said:
                print(f"flower-simulation: {said}", file=sys.stderr, flush=True)

        try:
            with quiet_logs():
                check_inputs(config, force=args.force)
                from simulations.ray_simulation import run_ray_simulation  # Ray only once input is fine

                report = run_ray_simulation(
                    config,
                    args.client_cpus,
                    progress=not args.no_progress,
                    started=started,
                    ray_address=args.ray_address,
                    on_stop=unfinished,
                )
            finished = True
        finally:
            if not finished:
                unfinished()
        print_summary(report, out_dir)
        return 0

    code = run_cli(work, "flower-simulation")
    if code in (INTERRUPTED_EXIT, STOPPED_EXIT):  # Ray is already shut down; the ServerApp thread may still wait
        sys.stderr.flush()
        os._exit(code)
    return code


def print_summary(report: dict, out_dir) -> None:
    final = report["final"]
    parts = [f"accuracy (global) {final['accuracy_global']:.4f}"] if final.get("accuracy_global") is not None else []
    for key in ("accuracy_personalized", "accuracy_global_shifted", "accuracy_personalized_shifted"):
        if final.get(key) is not None:
            parts.append(f"{key.removeprefix('accuracy_').replace('_', ' ')} {final[key]:.4f}")
    print("final: " + ", ".join(parts))
    print(
        f"per client per round: up {final['bytes_up_per_client_per_round']:,.0f} B, down "
        f"{final['bytes_down_per_client_per_round']:,.0f} B; factors derived by {final['factors_derived']} and "
        f"shipped to {final['factors_shipped']} of {final['clients_reached']} clients "
        f"({final['basis_bytes_down_total']:,} B shipped)"
    )
    print(f"wall time {final['wall_seconds']:.0f} s; report: {out_dir / REPORT_MD}")


if __name__ == "__main__":
    sys.exit(main())
