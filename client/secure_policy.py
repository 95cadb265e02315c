"""What a node accepts of secure aggregation, whatever the server or a relay asks of it.

* It takes part only if its own configuration allows it: node config `secure-aggregation`
  (`client.run --superlink ... --secure-aggregation`). Without that entry a simulated node (no
  `data-dir`, no pinned key: the run config is the operator's own) follows the run config; a
  deployed or pinned node refuses, since its run config came through the SuperLink. With
  `secure-aggregation=true` the node also refuses to send a plain train update.
* Groups of at least its minimum: node config `secagg-min-clients`, default and at least
  MIN_GROUP = 3 (with 2, each client reads the other's update off the global change); the same
  minimum of survivors before it reveals any share.
* The setup must carry the server's signature (the signing key it pinned or trusted first), be
  for this run and round, and for a round after any it already started (no replays).
"""

from flwr.app import ConfigRecord, Context, Message

from client.server_key import PINNED, server_key
from shared.crypto.secagg.params import MIN_GROUP, SecAggError, SecAggParams
from shared.crypto.signing import record_digest
from shared.federation.protocol import CONFIG
from shared.federation.secure_auth import SETUP, SETUP_SIGNATURE, check_statement
from shared.federation.secure_messages import setup_entries

ALLOW, MIN_CLIENTS = "secure-aggregation", "secagg-min-clients"  # node config keys
LAST_ROUND = "loraxs.secagg-last-round"  # context.state: the last (run, round) this node started


def allowed(context: Context, run_secure: bool) -> bool:
    value = context.node_config.get(ALLOW)
    if value is not None:
        return _true(value)
    deployed = context.node_config.get("data-dir") or context.node_config.get(PINNED)
    return bool(run_secure) and not deployed


def required(context: Context) -> bool:
    """The node's own config asks for secure aggregation: no plain train update leaves it."""
    return _true(context.node_config.get(ALLOW, False))


def min_clients(context: Context) -> int:
    value = context.node_config.get(MIN_CLIENTS, MIN_GROUP)
    try:
        return max(MIN_GROUP, int(value))
    except (TypeError, ValueError):
        raise SecAggError(f"node config {MIN_CLIENTS} must be an integer, got {value!r}") from None


def check_setup(msg: Message, context: Context, run_secure: bool, params: SecAggParams, fingerprint: str) -> bytes:
    """Returns the setup's digest (later stages are signed over it); SecAggError if refused."""
    if not allowed(context, run_secure):
        raise SecAggError(
            f"this node's own configuration does not allow secure aggregation "
            f"(node config {ALLOW}=true): refusing the setup"
        )
    minimum = min_clients(context)
    if len(params.participants) < minimum:
        raise SecAggError(
            f"a secure-aggregation group of {len(params.participants)} clients is below this "
            f"node's minimum of {minimum}: refusing the setup"
        )
    config = msg.content[CONFIG]
    if params.run_id != msg.metadata.run_id or params.server_round != int(config["server-round"]):
        raise SecAggError("the secure-aggregation setup belongs to another run or round")
    entries = setup_entries(config)
    digest = record_digest(entries)
    check_statement(server_key(context), config.get(SETUP_SIGNATURE), SETUP, params, fingerprint, digest, entries)
    last = context.state.get(LAST_ROUND)
    if last is not None and last["run"] == str(params.run_id) and int(last["round"]) >= params.server_round:
        raise SecAggError(
            f"a secure-aggregation setup for round {params.server_round}, which this node already started: a replay"
        )
    context.state[LAST_ROUND] = ConfigRecord({"run": str(params.run_id), "round": params.server_round})
    return digest


def _true(value: object) -> bool:
    return value is True or value == "true"
