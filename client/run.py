"""The on-device client.

Local personalization (no server):
    python -m client.run --data DIR [--adapter GLOBAL.safetensors] [--out PERSONAL.safetensors]
                         [--epochs N] [--model M] [--rank R] [--seed S] [--basis FILE] [--force]
On onnxruntime alone (no PyTorch; MODEL_DIR from `python -m client.export --training MODEL_DIR`):
    python -m client.run --runtime onnx --model-dir MODEL_DIR --data DIR [--adapter FILE] [--out FILE]
(the default, --runtime auto, trains on onnx where --model-dir is given or DIR/.loraxs/onnx-training holds
artifacts, else on PyTorch)
Joining a federation as a Flower SuperNode (DIR is its data, passed as node config):
    python -m client.run --data DIR --superlink HOST:PORT
                         [--root-certificates CA.crt] [--auth-key KEY] [--insecure]
                         [--server-key server_key.pub] [--secure-aggregation]

User errors print one line to stderr and exit non-zero; no file is ever half-written.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from client.adapter_key import add_key_flags, key_source
from shared.cli import refuse_blank_values, run_cli
from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.loraxs.config import LoraXSConfig
from shared.parts_report import calibration_line, parts_lines
from shared.recipe.config import LENGTH_PERCENTILE, PersonalTrainingConfig

RECIPE = PersonalTrainingConfig()  # the defaults, for the help text
RECIPE_FLAGS = (
    "epochs",
    "lr",
    "head_lr",
    "batch_size",
    "max_length",
    "val_fraction",
    "patience",
    "select_on",
    "train_blocks",
    "time_budget",
    "joint_lexical",
)
LOCAL_ONLY = (
    "adapter",
    "out",
    "basis",
    "model",
    "rank",
    "task",
    "device",
    "no_lexical",
    "no_calibration",
    *RECIPE_FLAGS,
)  # flags that mean nothing with --superlink
FEDERATION_ONLY = ("root_certificates", "auth_key", "server_key")  # and --insecure, --secure-aggregation
NOT_ON_ONNX = ("basis", "model", "rank", "task", "device", "key_file", "encrypt_at_rest")  # --runtime onnx
DEFAULT_OUT_NAME = "personal_adapter.safetensors"  # = client.personalization's (a test checks)
RUNTIMES = ("auto", "torch", "onnx")
ONNX_ARTIFACTS = Path(".loraxs") / "onnx-training"  # in the data folder: the artifacts `auto` picks up
# The PyTorch runtime's modules (torch, transformers, datasets) and the SuperNode's are imported
# only when used: `--runtime onnx` runs in a process that never imports torch.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client.run",
        description="Personalize a LoRA-XS adapter on a local text folder, or join a federation.",
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="folder of *.jsonl / *.csv (text,label) or *.txt (causal-lm) files"
    )
    local = parser.add_argument_group("local personalization")
    local.add_argument("--adapter", metavar="FILE", help="adapter to start from (e.g. a global one)")
    local.add_argument(
        "--out",
        metavar="FILE",
        help=f"personal adapter to write (default DIR/{DEFAULT_OUT_NAME}); a missing folder is created",
    )
    local.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    local.add_argument("--basis", metavar="FILE", help="the factor bundle the server shipped")
    local.add_argument(
        "--epochs",
        type=float,
        help=(
            f"most passes over the training split; early stopping may end sooner (default: "
            f"{RECIPE.step_budget} steps as {RECIPE.min_epochs}-{RECIPE.max_epochs} epochs)"
        ),
    )
    local.add_argument("--model", help="base model id or folder (default: the packaged MiniLM)")
    local.add_argument(
        "--rank",
        type=int,
        help=f"LoRA-XS rank without --adapter (default {LoraXSConfig.rank}); "
        "with one, a smaller rank trains only its top-left block (mixed ranks)",
    )
    local.add_argument("--task", choices=TASKS, help="default: from the adapter, else from the files")
    local.add_argument("--lr", type=float, help=f"learning rate of the r x r matrices (default {RECIPE.lr:g})")
    local.add_argument(
        "--head-lr",
        type=float,
        help=(f"learning rate of the head (default: --lr x {RECIPE.head_lr_scale:g} after its closed-form start)"),
    )
    local.add_argument("--batch-size", type=int, help=f"default {RECIPE.batch_size}")
    local.add_argument(
        "--max-length",
        type=int,
        help=(
            f"tokens per text (default: the {LENGTH_PERCENTILE}th percentile of the folder's, "
            f"{RECIPE.min_length}-{RECIPE.length_cap})"
        ),
    )
    local.add_argument(
        "--val-fraction",
        type=float,
        help=(f"share of the training split held out to choose the epoch (default {RECIPE.val_fraction:g})"),
    )
    local.add_argument(
        "--patience",
        type=int,
        help=(f"epochs without a better validation score before stopping (default {RECIPE.patience})"),
    )
    local.add_argument(
        "--select-on",
        choices=("loss", "accuracy"),
        help=(f"validation score that picks the epoch and the interpolation point (default {RECIPE.select_on})"),
    )
    local.add_argument(
        "--no-lexical",
        action="store_true",
        default=None,
        help="no lexical part (by default one is added when it helps on validation)",
    )
    local.add_argument(
        "--joint-lexical",
        action="store_true",
        default=None,
        help="choose the lexical part before training and train R and the head around it "
        "(by default it is chosen after training)",
    )
    local.add_argument(
        "--no-calibration",
        action="store_true",
        default=None,
        help="no temperature (by default one is fit on validation: calibrated probabilities)",
    )
    local.add_argument(
        "--train-blocks",
        type=int,
        help=(
            "train the R of the top N transformer blocks only; the hidden states entering them are computed once "
            f"per text (default {RECIPE.train_blocks or 'all'})"
        ),
    )
    local.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help=("stop training in time to finish within about SECONDS, keeping the best validated adapter so far"),
    )
    local.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    local.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help=(
            f"auto (default): onnx when --model-dir is given or DIR/{ONNX_ARTIFACTS} holds artifacts and no "
            "PyTorch-only flag is, else torch; torch: PyTorch; onnx: onnxruntime + numpy with the training "
            "artifacts of --model-dir"
        ),
    )
    local.add_argument("--model-dir", metavar="DIR", help="training artifacts (python -m client.export --training DIR)")
    local.add_argument("--threads", type=int, default=0, help="onnxruntime threads with --runtime onnx (0: its choice)")
    local.add_argument("--seed", type=int, default=0, help="data split, head init and shuffling")
    federation = parser.add_argument_group("joining a federation")
    federation.add_argument("--superlink", metavar="HOST:PORT", help="run as a SuperNode of this SuperLink")
    federation.add_argument("--root-certificates", metavar="CA.crt", help="CA of the SuperLink's TLS certificate")
    federation.add_argument("--auth-key", metavar="KEY", help="SuperNode private key (registered on the SuperLink)")
    federation.add_argument("--insecure", action="store_true", help="no TLS (loopback tests only)")
    federation.add_argument(
        "--server-key", metavar="FILE", help="pin the ServerApp's public key (server_key.pub): updates are sealed to it"
    )
    federation.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="take part in secure aggregation when the server asks (else this node refuses it), "
        "and never send a plain update",
    )
    add_key_flags(parser, encrypt=True)
    args = parser.parse_args(argv)
    refuse_blank_values(parser, args)  # --model '' is no default, --adapter '' no "none"
    return args


def check_mode_flags(args: argparse.Namespace) -> None:
    if args.superlink:
        given = [name for name in LOCAL_ONLY if getattr(args, name) is not None] + (["force"] if args.force else [])
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise LoraXSError(f"{flags}: only for local personalization, not with --superlink")
        return
    given = (
        [name for name in FEDERATION_ONLY if getattr(args, name) is not None]
        + (["insecure"] if args.insecure else [])
        + (["secure_aggregation"] if args.secure_aggregation else [])
    )
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise LoraXSError(f"{flags}: only for joining a federation with --superlink HOST:PORT")


def resolve_runtime(args: argparse.Namespace) -> None:
    """--runtime auto -> onnx or torch (see its help); sets args.model_dir for found artifacts."""
    if args.runtime != "auto":
        return
    found = Path(args.data).expanduser() / ONNX_ARTIFACTS
    if args.model_dir is not None:
        args.runtime = "onnx"
    elif (found / "training.json").is_file() and not any(getattr(args, n, None) for n in NOT_ON_ONNX):
        args.runtime, args.model_dir = "onnx", str(found)
    else:
        args.runtime = "torch"


def check_runtime_flags(args: argparse.Namespace) -> None:
    resolve_runtime(args)
    if args.runtime != "onnx":
        if args.model_dir is not None:
            raise LoraXSError("--model-dir: the training artifacts of --runtime onnx; pass --runtime onnx")
        return
    if args.model_dir is None:
        raise LoraXSError("--runtime onnx needs --model-dir DIR (python -m client.export --training DIR)")
    given = [name for name in NOT_ON_ONNX if getattr(args, name, None)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise LoraXSError(
            f"{flags}: not with --runtime onnx (the training artifacts fix the model, "
            "factors and rank); use --runtime torch"
        )


def local_run_fields(args: argparse.Namespace) -> dict:
    """What both runtimes' run configs take from the flags of a local personalization."""
    given = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    return {
        "data_dir": args.data,
        "adapter": args.adapter,
        "out": args.out,
        "force": args.force,
        "seed": args.seed,
        "training": PersonalTrainingConfig(seed=args.seed, **given),
        "lexical": not args.no_lexical,
        "calibrate": not args.no_calibration,
    }


def onnx_config(args: argparse.Namespace):
    from client.onnx_training.personalize import OnnxRunConfig

    return OnnxRunConfig(model_dir=args.model_dir, threads=args.threads, **local_run_fields(args))


def personalization_config(args: argparse.Namespace):
    from client.personalization import PersonalizationConfig

    return PersonalizationConfig(
        basis_file=args.basis,
        model=args.model,
        rank=args.rank,
        task=args.task,
        **local_run_fields(args),
        **({"device": args.device} if args.device else {}),
    )


def print_report(result) -> None:
    """result: client.personalization.PersonalizationResult."""
    meta, recipe = result.meta, result.recipe
    print(
        f"base model {meta.base_model}, task {meta.task}, rank {meta.rank}, "
        f"factors from {result.factors_source} (basis {meta.basis_fingerprint[:12]})"
    )
    training = recipe.training
    print(
        f"trained on {recipe.num_fit} of {result.num_train} examples ({recipe.num_val} held out for "
        f"validation), {recipe.max_length} tokens: {training.steps} steps in {training.seconds:.1f} s, "
        f"mean loss {training.loss:.4f}"
    )
    shown = (lambda score: score) if recipe.measure == "accuracy" else (lambda score: -score)  # loss: lower is better
    history = ", ".join(f"{shown(score):.3f}" for score in recipe.history)
    if getattr(recipe, "stopped_on_time", False):
        print(
            f"stopped on time: the --time-budget ran out after {training.steps} steps; the best validated "
            "adapter so far is kept"
        )
    print(
        f"validation {recipe.measure}: start ({recipe.start}) {shown(recipe.start_score):.4f}; after each epoch {history}"
    )
    if recipe.held_back:
        print(
            f"not kept: epoch(s) {', '.join(map(str, recipe.held_back))}: a lower validation {recipe.measure} "
            f"but a validation accuracy below the start's"
        )
    if recipe.improved:
        print(f"kept epoch {recipe.best_epoch} (validation {recipe.measure} {shown(recipe.best_score):.4f})")
    else:
        print(f"note: no epoch beat the start on validation; the adapter written is {recipe.kept}")
    if recipe.lam_scores:
        scores = ", ".join(f"{lam:g}: {shown(score):.3f}" for lam, score in recipe.lam_scores.items())
        print(
            f"interpolation toward the best epoch, validation {recipe.measure} by lam ({scores}): kept lam = {recipe.lam:g}"
            + (f" ({recipe.kept})" if recipe.lam == 0.0 else "")
        )
    if recipe.start_accuracy is not None and recipe.kept_accuracy is not None:
        below = recipe.kept_accuracy < recipe.start_accuracy
        why = (
            "nothing beat it by the required margin"
            if recipe.lam == 0.0
            else f"kept for its lower validation {recipe.measure}"
        )
        print(
            f"validation accuracy: start ({recipe.start}) {recipe.start_accuracy:.4f}, kept ({recipe.kept}) "
            f"{recipe.kept_accuracy:.4f}" + (f" (note: below the start; {why})" if below else "")
        )
    for line in parts_lines(result.parts):
        print(line)
    print(
        f"held-out accuracy before: {result.before.accuracy:.4f} (loss {result.before.loss:.4f}, "
        f"{result.before.examples} examples)"
    )
    print(f"held-out accuracy after:  {result.after.accuracy:.4f} (loss {result.after.loss:.4f})")
    if result.after_encoder is not None and result.after is not result.after_encoder:
        print(f"held-out accuracy of the encoder alone: {result.after_encoder.accuracy:.4f}")
    if result.calibration:
        print(calibration_line(result.calibration))
    for name, baseline in result.baselines.items():
        verdict = (
            "beaten"
            if result.after.accuracy > baseline.accuracy
            else ("tied" if result.after.accuracy == baseline.accuracy else "NOT beaten")
        )
        print(f"baseline {name}: {baseline.accuracy:.4f} on the same split ({verdict})")
    print(f"personal adapter: {result.num_bytes} bytes written to {result.out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work() -> int:
        check_mode_flags(args)
        if args.superlink and (args.key_file or args.encrypt_at_rest):
            raise LoraXSError("--encrypt-at-rest, --key-file: only for local personalization, not with --superlink")
        if args.superlink:
            from deployment.supernode import SuperNodeConfig, run_supernode

            if args.model_dir is not None and args.runtime == "torch":
                raise LoraXSError("--model-dir: the training artifacts of --runtime onnx; pass --runtime onnx")
            runtime = "onnx" if args.runtime == "onnx" or args.model_dir is not None else "torch"
            return run_supernode(
                SuperNodeConfig(
                    superlink=args.superlink,
                    data_dir=args.data,
                    root_certificates=args.root_certificates,
                    auth_key=args.auth_key,
                    insecure=args.insecure,
                    server_key=args.server_key,
                    secure_aggregation=args.secure_aggregation,
                    runtime=runtime,
                    onnx_model_dir=args.model_dir,
                )
            )
        check_runtime_flags(args)
        if args.runtime == "onnx":
            from client.onnx_training.personalize import personalize_onnx, report_lines

            print("\n".join(report_lines(personalize_onnx(onnx_config(args)))))
            return 0
        from client.personalization import personalize

        config = personalization_config(args)
        config = replace(
            config, key_source=key_source(args, config.adapter), encrypt_at_rest=bool(args.encrypt_at_rest)
        )
        print_report(personalize(config))
        return 0

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
