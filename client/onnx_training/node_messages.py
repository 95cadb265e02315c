"""A SuperNode's train and evaluate messages on onnxruntime: node config `runtime = "onnx"`.

A training message then imports onnxruntime, tokenizers and numpy, never torch: the node trains
the global adapter for `local-epochs` on its data folder with the exported training step
(`onnx-model-dir` in the node config, default `<data-dir>/.loraxs/onnx-training`) and AdamW in
numpy, and replies in the same layout as a PyTorch node (shared/federation/protocol.py: "lora_R"
(L, r, r) stacked in model order, the head tensors, in update-dtype), so a federation may mix
both kinds and the server averages them exactly as it averages PyTorch nodes. The artifacts'
basis fingerprint must be the one the server announces: they are the same factors.

Not on this runtime (one-line error reply): secure aggregation, sealed updates, mixed ranks,
personalize = finetune, causal-lm. The federation's own factors are never derived here: export
the artifacts with the server's basis file (`client.export --training DIR --basis FILE`).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from client.onnx_training.backend import OnnxBackend
from client.onnx_training.folder import FolderTokenizer, open_training_folder
from shared.data.local_folder import read_local_rows
from shared.errors import LoraXSError
from shared.federation.keys import ARRAYS, CONFIG, METRICS, STATUS
from shared.recipe.adamw import AdamW, clip_by_global_norm, warmup_linear
from shared.recipe.data import Examples, make_batches

RUNTIME_KEY, ONNX_RUNTIME, MODEL_DIR_KEY = "runtime", "onnx", "onnx-model-dir"
DEFAULT_MODEL_DIR = Path(".loraxs") / "onnx-training"
STACKED_R, HEAD_NAMES = "lora_R", ("classifier.weight", "classifier.bias")
UPDATE_DTYPES = {"fp32": np.float32, "fp16": np.float16}
WARMUP_RATIO, MAX_GRAD_NORM, EVAL_BATCH = 0.1, 1.0, 64  # shared/training.py's TrainConfig defaults


@dataclass(frozen=True)
class NodeSettings:
    """The run config keys an onnx node reads; the defaults are FederationConfig's (a test checks)."""

    task: str = "seq-cls"
    lr: float = 0.02
    head_lr: float = 0.01
    local_epochs: float = 1.0
    batch_size: int = 16
    max_length: int = 64
    update_dtype: str = "fp32"
    seed: int = 0
    labels: str = ""
    strategy: str = "fedavgm"
    proximal_mu: float = 0.0
    personalize: str = "none"
    client_ranks: str = ""
    secure_aggregation: bool = False
    encrypt_updates: bool = False

    @classmethod
    def from_run_config(cls, run_config) -> "NodeSettings":
        values = {}
        for name, default in cls.__dataclass_fields__.items():
            key = name.replace("_", "-")
            if key in run_config:
                values[name] = type(default.default)(run_config[key])
        return cls(**values)

    def refusal(self) -> str | None:
        """What this runtime cannot do in this federation, or None."""
        for what, on in (
            ("secure aggregation", self.secure_aggregation),
            ("sealed updates (encrypt-updates)", self.encrypt_updates),
            ("mixed ranks (client-ranks)", bool(self.client_ranks.strip())),
            ("personalize = finetune", self.personalize != "none"),
            (f"task {self.task}", self.task != "seq-cls"),
        ):
            if on:
                return f'{what} is not supported on a node with runtime = "onnx"; run this node with PyTorch'
        return None


def is_onnx_node(context: Context) -> bool:
    return str(context.node_config.get(RUNTIME_KEY, "")).strip().lower() == ONNX_RUNTIME


def answer(msg: Message, context: Context, work) -> Message:
    """`work(msg, node)` -> the reply's RecordDict; a user-caused problem is an error reply."""
    try:
        settings = NodeSettings.from_run_config(context.run_config)
        problem = settings.refusal()
        if problem:
            raise LoraXSError(problem)
        node = OnnxNode(
            settings, context, str(msg.content[CONFIG]["fingerprint"]), int(msg.content[CONFIG]["server-round"])
        )
        content = work(msg, node)
        content[STATUS] = ConfigRecord({"fingerprint": node.fingerprint})
        return Message(content, reply_to=msg)
    except (LoraXSError, ValueError, TypeError, KeyError) as err:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)


class OnnxNode:
    """One message's node: its data folder, training artifacts, backend and seed."""

    def __init__(self, settings: NodeSettings, context: Context, fingerprint: str, server_round: int):
        data_dir = context.node_config.get("data-dir")
        if not data_dir:
            raise LoraXSError('a node with runtime = "onnx" needs data-dir in its node config')
        model_dir = context.node_config.get(MODEL_DIR_KEY) or Path(str(data_dir)) / DEFAULT_MODEL_DIR
        self.folder = open_training_folder(model_dir)
        if self.folder.fingerprint != fingerprint:
            raise LoraXSError(
                f"this node's training artifacts ({model_dir}) hold basis {self.folder.fingerprint[:12]}, "
                f"the federation's is {fingerprint[:12]}: export them with the server's basis file "
                "(python -m client.export --training DIR --basis FILE)"
            )
        self.settings, self.fingerprint, self.round = settings, fingerprint, server_round
        self.rows = read_local_rows(str(data_dir), seed=settings.seed)
        wanted = [n.strip() for n in settings.labels.split(",") if n.strip()]
        if wanted and self.rows.labels != wanted:
            raise LoraXSError(f"this node's labels {self.rows.labels} differ from the federation's {wanted}")
        self.backend = OnnxBackend(self.folder)
        self.tokenize = FolderTokenizer(self.folder)
        # client/local_round.py:shuffle_seed
        self.seed = settings.seed * 1_000_003 + server_round * 1_009 + int(context.node_config.get("partition-id", 0))

    def params(self, record: ArrayRecord) -> tuple[dict[str, np.ndarray], np.dtype]:
        """The global adapter as Params, and the dtype it came in."""
        expected = [STACKED_R, *HEAD_NAMES]
        if not isinstance(record, ArrayRecord) or list(record.keys()) != expected:
            raise LoraXSError(f"the adapter arrays do not match {expected}")
        arrays = {}
        for key in expected:
            value = record[key]
            if not isinstance(value, Array):
                raise LoraXSError(f"{key} is not an array")
            arrays[key] = value.numpy()
        dtype = arrays[STACKED_R].dtype
        shape = tuple(self.folder.description["shapes"]["lora_R"])
        if arrays[STACKED_R].shape != shape:
            raise LoraXSError(f"lora_R has shape {arrays[STACKED_R].shape}, these artifacts take {shape}")
        params = {"lora_R": arrays[STACKED_R], "head_weight": arrays[HEAD_NAMES[0]], "head_bias": arrays[HEAD_NAMES[1]]}
        return {k: np.array(v, dtype=np.float32) for k, v in params.items()}, dtype

    def examples(self, texts: list[str], labels: list[int]) -> Examples:
        return Examples(self.tokenize(texts, self.settings.max_length), np.asarray(labels, dtype=np.int64))


def pack(params: dict[str, np.ndarray], dtype) -> ArrayRecord:
    arrays = {STACKED_R: params["lora_R"], HEAD_NAMES[0]: params["head_weight"], HEAD_NAMES[1]: params["head_bias"]}
    return ArrayRecord({k: Array(np.ascontiguousarray(v).astype(dtype)) for k, v in arrays.items()})


def local_training(node: OnnxNode, params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """`local-epochs` of AdamW (linear warmup and decay, clipping at 1.0, FedProx's pull when
    strategy = fedprox) over the node's train split, batches shuffled with the round's seed."""
    settings = node.settings
    examples = node.examples(node.rows.train_texts, node.rows.train_labels)
    if not len(examples.ids):
        raise LoraXSError("no training examples")
    indices = list(range(len(examples.ids)))
    num_batches = math.ceil(len(indices) / settings.batch_size)
    total = math.ceil(settings.local_epochs * num_batches)
    anchor = {k: v.copy() for k, v in params.items()}
    mu = settings.proximal_mu if settings.strategy == "fedprox" else 0.0
    optimizer = AdamW(params, {"lora_R": settings.lr, "head_weight": settings.head_lr, "head_bias": settings.head_lr})
    rng, step, losses = np.random.default_rng(node.seed), 0, []
    while step < total:
        for batch in make_batches(examples, indices, settings.batch_size, node.tokenize.pad_id, rng):
            loss, grads = node.backend.loss_and_grads(batch, params)
            if not math.isfinite(loss):
                raise LoraXSError(f"training diverged (non-finite loss at step {step + 1}); lower lr")
            if mu:
                loss += mu / 2 * sum(float(((params[k] - anchor[k]) ** 2).sum()) for k in params)
                grads = {k: g + mu * (params[k] - anchor[k]) for k, g in grads.items()}
            clip_by_global_norm(grads, MAX_GRAD_NORM)
            optimizer.step(params, grads, warmup_linear(step, int(WARMUP_RATIO * total), total))
            losses.append(loss)
            step += 1
            if step >= total:
                break
    return params, float(np.mean(losses))


def train_reply(msg: Message, node: OnnxNode) -> RecordDict:
    params, dtype = node.params(msg.content[ARRAYS])
    params, loss = local_training(node, params)
    if not all(np.isfinite(v).all() for v in params.values()):
        raise LoraXSError("training diverged (non-finite weights); lower lr")
    metrics = MetricRecord({"num-examples": len(node.rows.train_texts), "train-loss": loss})
    return RecordDict({ARRAYS: pack(params, dtype), METRICS: metrics})


def evaluate_reply(msg: Message, node: OnnxNode) -> RecordDict:
    params, _ = node.params(msg.content[ARRAYS])
    examples = node.examples(node.rows.test_texts, node.rows.test_labels)
    losses, correct = [], 0
    for batch in make_batches(examples, range(len(examples.ids)), EVAL_BATCH, node.tokenize.pad_id):
        logits = node.backend.features(batch, params) @ params["head_weight"].T + params["head_bias"]  # (B, C)
        shifted = logits - logits.max(1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))  # (B, C)
        losses += list(-log_p[np.arange(len(batch["labels"])), batch["labels"]])
        correct += int((logits.argmax(1) == batch["labels"]).sum())
    count = len(examples.ids)
    return RecordDict(
        {
            METRICS: MetricRecord(
                {
                    "num-examples": count,
                    "accuracy-global": correct / max(count, 1),
                    "loss-global": float(np.mean(losses)) if losses else 0.0,
                    "shifted": 0,
                }
            )
        }
    )
