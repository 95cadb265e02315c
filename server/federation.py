"""The ServerApp's work, apart from Flower's entry point: compute the basis once (the canonical,
reproducible SVD, rounded to basis-dtype), run the rounds (the LoRA-XS layer around the configured
aggregator, `build_strategy`), evaluate, save the artifacts and the report."""

import random
import time
from pathlib import Path

from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from server.after_round import AfterRound
from server.aggregators import make_aggregator
from server.checkpoint import Checkpoint, save_checkpoint
from server.report import build_report, write_report
from server.run_folder import resolve_out_dir, save_global_adapter, save_run_basis
from server.sealed_updates import UpdateSealing
from server.secure_rounds import SecureRounds
from server.strategy import LoraXSStrategy
from server.traffic import MeteredGrid, TrafficMeter
from shared.artifacts.adapter_file import adapter_meta
from shared.base_models import build_adapted_model, canonical_model_id, load_tokenizer
from shared.data.batches import EVAL_BATCH_SIZE, make_loader
from shared.federation.basis_recipe import BasisRecipe
from shared.federation.node_data import held_out_union, simulated_node_data
from shared.federation.protocol import EVALUATE_METRICS, PERSONAL_METRICS, pack_adapter, pack_basis, payload_bytes
from shared.federation.run_config import FederationConfig
from shared.loraxs.basis import Basis
from shared.loraxs.model import adapter_state


def run_federation(grid: Grid, config: FederationConfig, progress: bool = False, started: float | None = None) -> dict:
    """Runs every round on `grid`; returns the report (also written to the output folder).
    `started`: the `time.perf_counter()` the wall time counts from (default: now)."""
    started = time.perf_counter() if started is None else started
    random.seed(config.seed)  # anything of Flower's that still draws from `random`
    resume = None
    if config.resume_from:
        resume = Checkpoint(Path(config.resume_from))
        resume.check_config(config)
    out_dir = resolve_out_dir(config.resume_from or config.out_dir)
    model_id = canonical_model_id(config.model)
    labels, loader = _held_out(config, model_id)
    model, basis = build_adapted_model(model_id, config.task, config.lora_config(), labels, seed=config.seed)
    save_run_basis(out_dir, basis, model_id)
    # the server's keys: sealed updates open with them, secure aggregation's messages are signed with them
    keys = (
        UpdateSealing.for_run(config.server_key_file, out_dir, config.hpke_suite)
        if config.encrypt_updates or config.secure_aggregation
        else None
    )
    strategy = build_strategy(config, model_id, basis, keys, round_offset=resume.round if resume else 0)
    meter = TrafficMeter()
    metered = MeteredGrid(grid, meter)
    initial = resume.arrays if resume else pack_adapter(adapter_state(model), "fp32")
    meta = adapter_meta(model_id, config.task, config.lora_config(), basis, labels, kind="global")
    done = resume.round if resume else 0
    with tqdm(total=config.num_server_rounds, initial=done, desc="rounds", unit="round", disable=not progress) as bar:
        after_round = AfterRound(model, lambda state, r: save_global_adapter(out_dir, state, meta, r), loader, bar)
        if resume:
            strategy.restore(resume.strategy, metered, factors_held=keys is None)
            resume.restore_traffic(meter, strategy.partitions)
            after_round.rounds.update(resume.rounds)

        def after_each_round(server_round: int, arrays):  # Flower counts from 1 again on resume
            measured = after_round(server_round + done if server_round else 0, arrays)
            if server_round:
                save_checkpoint(
                    out_dir,
                    server_round + done,
                    arrays,
                    config,
                    strategy.state(),
                    meter,
                    after_round.rounds,
                    strategy.partitions,
                )
            return measured

        result = (
            strategy.start(
                grid=metered,
                initial_arrays=initial,
                num_rounds=config.num_server_rounds - done,
                train_config=ConfigRecord(),
                evaluate_config=ConfigRecord(),
                evaluate_fn=after_each_round,
                timeout=config.round_timeout,
            )
            if config.num_server_rounds > done
            else None
        )
    final_arrays = result.arrays if result is not None and len(result.arrays) else initial
    final_clients = []
    if config.final_eval_fraction > 0:
        if progress:
            tqdm.write(f"final evaluation on {config.final_eval_fraction:.0%} of the clients ...")
        final_clients = strategy.evaluate_clients(
            metered, final_arrays, config.final_eval_fraction, config.num_server_rounds
        )
    report = build_report(
        config,
        strategy,
        meter,
        after_round.rounds,
        final_clients,
        adapter_bytes=payload_bytes(pack_adapter(adapter_state(model), config.update_dtype)),
        basis_bytes=basis.num_bytes(),
        wall_seconds=time.perf_counter() - started,
    )
    write_report(out_dir, report)
    return report


def build_strategy(
    config: FederationConfig, model_id: str, basis: Basis, keys: UpdateSealing | None, round_offset: int = 0
) -> LoraXSStrategy:
    """The LoRA-XS layer for this run around the configured aggregator (server/aggregators.py); `keys`:
    the server's keys (sealed updates open with them, secure aggregation's messages are signed with them)."""
    personal = config.personalize == "finetune"
    return LoraXSStrategy(
        pack_basis(basis, config.basis_dtype),
        basis.fingerprint,
        config.update_dtype,
        evaluate_metrics=EVALUATE_METRICS + (PERSONAL_METRICS if personal else ()),
        sealing=keys,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.num_clients,
        seed=config.seed,
        round_offset=round_offset,
        reply_timeout=config.round_timeout,
        max_client_examples=config.max_client_examples,
        partition_sizes=_partition_sizes(config),
        recipe=BasisRecipe.of(model_id, config.lora_config()).to_config()
        if config.basis_delivery == "derive"
        else None,
        secure=SecureRounds(config.secagg_timeout, config.secagg_clipping_range, config.max_client_examples, keys)
        if config.secure_aggregation
        else None,
        aggregator=make_aggregator(config),
        mixed_rank_aggregation=config.mixed_rank_aggregation,
    )


def _held_out(config: FederationConfig, model_id: str) -> tuple[list[str] | None, object | None]:
    """The label names and the server's held-out loader (None without a simulated dataset)."""
    if not config.dataset:
        return config.label_names(), None
    held_out, labels = held_out_union(config, config.eval_max_examples)
    return labels, make_loader(held_out, load_tokenizer(model_id), config.task, EVAL_BATCH_SIZE, config.max_length)


def _partition_sizes(config: FederationConfig) -> dict[int, int]:
    """Simulation: the train examples of every partition, the most a client may claim."""
    if not config.dataset:
        return {}
    return {i: len(simulated_node_data(config, i).train) for i in range(config.num_clients)}
