"""The ClientApp: thin Flower glue. What a train or evaluate message does is in
client/message_work.py, the work itself in client/local_round.py.

Every Flower message runs in a fresh `flwr-clientapp` process that imports this module, so it
imports no torch: the partition query each node answers once per run (server/strategy.py) costs
the process Flower's own imports, not torch's and transformers' (benchmarks/results/deployment_load.md:
25 such queries at once were 25 processes of ~417 MiB); a train or evaluate message imports
client/message_work.py when it arrives.
`app` reads its settings from the run config (`flwr run .`); `make_client_app(config)` binds
them instead (the in-process simulation, where the run config is empty).
"""

from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.dp_clipping import client_clipping_mod
from shared.federation.keys import PARTITION_ID, STATUS
from shared.federation.secure_messages import MASKED_INPUT_ACTION, SHARE_KEYS_ACTION, UNMASK_ACTION

if TYPE_CHECKING:
    from shared.federation.run_config import FederationConfig

# Secure aggregation's stages 2-4 (client/secure_stages.py); stage 1 is the train reply.
SECURE_STAGES = {SHARE_KEYS_ACTION: "share_keys", MASKED_INPUT_ACTION: "masked_input", UNMASK_ACTION: "unmask"}


def make_client_app(config: "FederationConfig | None" = None, torch_threads: int | None = None) -> ClientApp:
    client_app = ClientApp(mods=[client_clipping_mod])  # acts only with dp = client-fixed

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        if _onnx_node(context):
            from client.onnx_training import node_messages

            return node_messages.answer(msg, context, node_messages.train_reply)
        from client import message_work

        return message_work.answer(msg, context, config, torch_threads, message_work.train_reply)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if _onnx_node(context):
            from client.onnx_training import node_messages

            return node_messages.answer(msg, context, node_messages.evaluate_reply)
        from client import message_work

        return message_work.answer(msg, context, config, torch_threads, message_work.evaluate_reply)

    for action, stage in SECURE_STAGES.items():
        client_app.train(action)(_secure_stage(stage))

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which partition this node serves (the server samples partitions, reproducibly)."""
        partition = context.node_config.get(PARTITION_ID)
        status = ConfigRecord({PARTITION_ID: int(partition)} if partition is not None else {})
        return Message(RecordDict({STATUS: status}), reply_to=msg)

    return client_app


def _onnx_node(context: Context) -> bool:
    """Node config `runtime = "onnx"`: train and evaluate with onnxruntime, no torch imported
    (client/onnx_training/node_messages.py)."""
    return str(context.node_config.get("runtime", "")).strip().lower() == "onnx"


def _secure_stage(name: str):
    def stage(msg: Message, context: Context) -> Message:
        from client import secure_stages

        return getattr(secure_stages, name)(msg, context)

    stage.__name__ = name
    return stage


app = make_client_app()
