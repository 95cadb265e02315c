"""What a train or evaluate message does on the node; client/app.py imports this module when
such a message arrives (a partition query never does). The work itself is in client/local_round.py.

Every message: store the factors if they came along (after checking their fingerprint), or
derive them if their recipe came along (client/derived_factors.py), answer "unknown-fingerprint"
if this node does not hold the announced factors, else load the
global adapter into the process's cached model and train / evaluate on this node's data.
A user-caused problem (wrong labels, bad data folder) becomes an error reply with one line.
"""

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from client import secure_policy, secure_stages
from client.derived_factors import derive_announced_factors
from client.local_round import derive_personal, evaluate_state, shuffle_seed, train_update
from client.node_state import NodeState, node_state_for
from client.server_key import remember_server_key, seal_train_reply
from client.worker_cache import cached_model, cached_tokenizer
from shared.artifacts.adapter_file import adapter_meta
from shared.base_models import canonical_model_id, resolve_device
from shared.errors import LoraXSError
from shared.federation.node_data import NodeData, node_data
from shared.federation.protocol import (
    ARRAYS,
    BASIS,
    CONFIG,
    FACTORS,
    METRICS,
    STATUS,
    UNKNOWN_FINGERPRINT,
    nested_basis,
    pack_adapter,
    top_left_adapter,
    unpack_adapter,
    unpack_basis,
)
from shared.federation.run_config import FederationConfig
from shared.federation.sealed_update import SERVER_KEY, SERVER_SIGNING_KEY
from shared.federation.secure_messages import params_from_config


def answer(msg, context, bound_config, torch_threads, work) -> Message:
    try:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        config = bound_config or FederationConfig.from_run_config(context.run_config)
        fingerprint = str(msg.content[CONFIG]["fingerprint"])
        state = node_state_for(context)
        if BASIS in msg.content:
            state.store_basis(unpack_basis(msg.content[BASIS], fingerprint), canonical_model_id(config.model))
        factors = derive_announced_factors(msg.content[CONFIG], config, state, fingerprint)
        told = {FACTORS: factors} if factors else {}  # what the node did with a recipe
        if SERVER_KEY in msg.content[CONFIG]:
            remember_server_key(context, msg.content[CONFIG][SERVER_KEY], msg.content[CONFIG].get(SERVER_SIGNING_KEY))
        if not state.has_basis(fingerprint):
            status = ConfigRecord({"error": UNKNOWN_FINGERPRINT, "fingerprint": fingerprint, **told})
            return Message(RecordDict({STATUS: status}), reply_to=msg)
        job = MessageWork(config, context, state, fingerprint, int(msg.content[CONFIG]["server-round"]))
        content = seal_train_reply(work(msg, job), msg, context, config.encrypt_updates, fingerprint, job.round)
        content[STATUS] = ConfigRecord({"fingerprint": fingerprint, **told})
        return Message(content, reply_to=msg)
    except LoraXSError as err:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)


class MessageWork:
    """Everything one message is worked on with: config, node data, the worker's cached model,
    the node state and the seeds. Built per message; the model comes from client/worker_cache."""

    def __init__(
        self, config: FederationConfig, context: Context, state: NodeState, fingerprint: str, server_round: int
    ):
        self.config, self.state, self.fingerprint, self.round = config, state, fingerprint, server_round
        self.context = context
        self.data: NodeData = node_data(config, context.node_config)
        self.labels = tuple(self.data.labels) if self.data.labels else None
        self.rank = config.node_rank(context.node_config)  # mixed ranks: this device's r' <= rank
        self.lora = config.node_lora_config(self.rank)
        nested = self.rank < config.rank
        load = (
            (lambda: nested_basis(state.basis(fingerprint), self.rank))
            if nested
            else (lambda: state.basis(fingerprint))
        )
        self.model = cached_model(
            canonical_model_id(config.model),
            config.task,
            self.lora,
            self.labels,
            f"{fingerprint}/rank-{self.rank}" if nested else fingerprint,
            load,
            verify=not nested,
        )
        self.tokenizer = cached_tokenizer(canonical_model_id(config.model))
        self.device = resolve_device("auto")
        self.seed = shuffle_seed(config, server_round, int(context.node_config.get("partition-id", 0)))

    def global_state(self, msg: Message) -> dict[str, torch.Tensor]:
        names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        return unpack_adapter(top_left_adapter(msg.content[ARRAYS], self.rank), names)


def train_reply(msg: Message, work: MessageWork) -> RecordDict:
    params = params_from_config(msg.content[CONFIG])
    if params is not None:  # checked before any training: the node's own rules, the server's signature
        setup_digest = secure_policy.check_setup(
            msg, work.context, work.config.secure_aggregation, params, work.fingerprint
        )
    elif work.config.secure_aggregation or secure_policy.required(work.context):
        raise LoraXSError("this client sends its update only through secure aggregation")
    update = train_update(
        work.model, work.global_state(msg), work.data, work.tokenizer, work.config, work.seed, work.device
    )
    metrics = MetricRecord({"num-examples": len(work.data.train), "train-loss": update.result.loss})
    if params is not None:  # secure aggregation: the delta stays here, the reply is stage 1
        return secure_stages.keys_reply(
            msg, work.context, params, pack_adapter(update.state, "fp32"), metrics, work.fingerprint, setup_digest
        )
    return RecordDict({ARRAYS: pack_adapter(update.state, work.config.update_dtype), METRICS: metrics})


def evaluate_reply(msg: Message, work: MessageWork) -> RecordDict:
    config, global_state = work.config, work.global_state(msg)
    result = evaluate_state(work.model, global_state, work.data, work.tokenizer, config, work.device)
    metrics = {
        "num-examples": len(work.data.test),
        "accuracy-global": result.accuracy,
        "loss-global": result.loss,
        "shifted": int(work.data.shifted),
    }
    if config.personalize == "finetune":
        personal, personal_round = _personal_adapter(work, global_state)
        mine = evaluate_state(work.model, personal, work.data, work.tokenizer, config, work.device)
        metrics.update(
            {"accuracy-personal": mine.accuracy, "loss-personal": mine.loss, "personal-round": personal_round}
        )
    return RecordDict({METRICS: MetricRecord(metrics)})


def _personal_adapter(work: MessageWork, global_state: dict) -> tuple[dict[str, torch.Tensor], int]:
    """The stored personal adapter, re-derived first when this global adapter is newer. A node
    at a smaller rank (mixed ranks) keeps its adapter on the nested factors, under their
    fingerprint, as `client.run --rank` writes it."""
    config = work.config
    basis = work.state.basis(work.fingerprint)
    if work.rank < config.rank:
        basis = nested_basis(basis, work.rank)
    stored = work.state.personal_adapter(basis.fingerprint)
    if stored is not None and stored[1] >= work.round:
        return stored
    personal = derive_personal(work.model, global_state, work.data, work.tokenizer, work.config, work.seed, work.device)
    meta = adapter_meta(
        config.model,
        config.task,
        work.lora,
        basis,
        list(work.labels) if work.labels else None,
        round=str(work.round),
        kind="personal",
    )
    work.state.store_personal_adapter(personal, meta)
    return personal, work.round
