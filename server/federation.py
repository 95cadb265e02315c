"""The ServerApp's work, apart from Flower's entry point: compute the basis once, run FedAvg over
the r x r matrices and head, evaluate, save the artifacts and the report."""

import random
import time
from datetime import datetime
from pathlib import Path

from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from shared.federation.node_data import held_out_union
from server.global_evaluation import GlobalEvaluation
from shared.federation.protocol import EVALUATE_METRICS, PERSONAL_METRICS, pack_adapter, pack_basis, payload_bytes
from server.report import build_report, write_report
from shared.federation.run_config import FederationConfig
from server.strategy import LoraXSFedAvg
from server.traffic import MeteredGrid, TrafficMeter
from shared.adapted_model import adapter_meta, build_adapted_model
from shared.basis_file import save_basis
from shared.data.batches import make_loader
from shared.loraxs.model import adapter_state
from shared.models import canonical_model_id, load_tokenizer

BASIS_FILE = "basis.safetensors"
EVAL_BATCH_SIZE = 64


def resolve_out_dir(out_dir: str) -> Path:
    return Path(out_dir) if out_dir else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_federation(grid: Grid, config: FederationConfig, progress: bool = False) -> dict:
    """Runs every round on `grid`; returns the report (also written to the output folder)."""
    started = time.perf_counter()
    random.seed(config.seed)  # Flower's FedAvg samples nodes with the `random` module
    out_dir = resolve_out_dir(config.out_dir)
    model_id = canonical_model_id(config.model)

    labels = config.label_names()
    held_out = None
    if config.dataset:
        held_out, labels = held_out_union(config, config.eval_max_examples)
    model, basis = build_adapted_model(model_id, config.task, config.lora_config(), labels, seed=config.seed)
    save_basis(out_dir / BASIS_FILE, basis, model_id)
    loader = None
    if held_out is not None:
        loader = make_loader(held_out, load_tokenizer(model_id), config.task, EVAL_BATCH_SIZE, config.max_length)

    personal = config.personalize == "finetune"
    strategy = LoraXSFedAvg(
        pack_basis(basis), basis.fingerprint, config.update_dtype,
        evaluate_metrics=EVALUATE_METRICS + (PERSONAL_METRICS if personal else ()),
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
        min_available_nodes=config.num_clients,
    )
    meter = TrafficMeter()
    metered = MeteredGrid(grid, meter)
    initial = pack_adapter(adapter_state(model), "fp32")
    meta = adapter_meta(model_id, config.task, config.lora_config(), basis, labels, kind="global")
    with tqdm(total=config.num_server_rounds, desc="rounds", unit="round", disable=not progress) as bar:
        global_eval = GlobalEvaluation(model, out_dir, meta, loader, bar)
        result = strategy.start(
            grid=metered, initial_arrays=initial, num_rounds=config.num_server_rounds,
            train_config=ConfigRecord(), evaluate_config=ConfigRecord(), evaluate_fn=global_eval,
        )
    final_arrays = result.arrays if len(result.arrays) else initial
    final_clients = []
    if config.final_eval_fraction > 0:
        if progress:
            tqdm.write(f"final evaluation on {config.final_eval_fraction:.0%} of the clients ...")
        final_clients = strategy.evaluate_clients(
            metered, final_arrays, config.final_eval_fraction, config.num_server_rounds
        )
    report = build_report(
        config, strategy, meter, global_eval.rounds, final_clients,
        adapter_bytes=payload_bytes(pack_adapter(adapter_state(model), config.update_dtype)),
        basis_bytes=basis.num_bytes(), wall_seconds=time.perf_counter() - started,
    )
    write_report(out_dir, report)
    return report

