"""Secure aggregation on the Message API (`secure-aggregation = true`): what travels per stage.

Added to the message contract of shared/federation/protocol.py. The stages are those of
`shared.crypto.secagg` (its docstring); node ids travel as decimal strings (they are uint64,
ConfigRecord integers are sint64). Every down message carries config "server-round" and the
server's signature, every stage reply is sealed to the server (shared/federation/secure_auth.py).
  train            the usual train message; config also holds the round's setup,
                   "secagg-<field>" for every SecAggParams field ("secagg-participants": [str],
                   "secagg-run_id": str), and "setup-signature" over it.
    reply          "metrics", "status" as in plain rounds, and "sealed" holding the stage-1
                   "secagg" ConfigRecord {"enc-pk", "mask-pk", "seed-hash"} in place of "arrays":
                   the client trained, checked its delta and keeps it in its state, unsent.
  train.secagg_share_keys  "secagg" {"<node>": enc_pk || mask_pk}, config "signature"
                   -> sealed "secagg" {"<peer>": box, "commitments": [64 B per participant]}
  train.secagg_masked      "secagg" {"<sender>": box || commitment}, config "weight" (the server's
                   bound on this client's num-examples) and "signature" (for this recipient)
                   -> sealed "masked" ArrayRecord {"y": (d + 1,) uint32}
  train.secagg_unmask      "secagg" {"survivors": [str], "dropped": [str]}, config "signature"
                   -> sealed "secagg" {"<node>": share}
The vector x (d,) is the delta of the adapter, trained - global, over the "arrays" record of the
train message (keys in record order, each flattened), in float64; the server adds the weighted
mean delta to the same global record. An error reply at any stage drops that client.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from shared.crypto.secagg.params import SecAggError, SecAggParams

SECAGG, MASKED, MASKED_Y, WEIGHT = "secagg", "masked", "y", "weight"
SETUP_PREFIX = "secagg-"
SHARE_KEYS, MASKED_INPUT, UNMASK = "train.secagg_share_keys", "train.secagg_masked", "train.secagg_unmask"
SHARE_KEYS_ACTION, MASKED_INPUT_ACTION, UNMASK_ACTION = (t.split(".")[1] for t in (SHARE_KEYS, MASKED_INPUT, UNMASK))


def setup_config(params: SecAggParams) -> dict:
    """The round's setup as train-config entries (node ids as strings)."""
    config = params.to_config()
    config["participants"] = [str(n) for n in params.participants]
    config["run_id"] = str(params.run_id)
    return {SETUP_PREFIX + k: v for k, v in config.items()}


def setup_entries(config: ConfigRecord) -> dict:
    """The setup's entries of a train config, as the server signed them."""
    return {k: v for k, v in config.items() if k.startswith(SETUP_PREFIX)}


def params_from_config(config: ConfigRecord) -> SecAggParams | None:
    """The setup in a train config, None when the round is plain; SecAggError if malformed."""
    found = {k[len(SETUP_PREFIX) :]: v for k, v in setup_entries(config).items()}
    if not found:
        return None
    try:
        found["participants"] = [int(n) for n in found["participants"]]
        found["run_id"] = int(found["run_id"])
    except Exception:
        raise SecAggError("malformed secure-aggregation setup (participants, run id)") from None
    return SecAggParams.from_config(found)


def node_keyed(mapping: dict) -> ConfigRecord:
    """{node id: bytes} -> ConfigRecord {"<node id>": bytes}."""
    return ConfigRecord({str(n): v for n, v in mapping.items()})


def vector_length(record: ArrayRecord) -> int:
    return sum(int(np.prod(a.shape)) for a in record.values())


def flat(record: ArrayRecord) -> np.ndarray:
    """(d,) float64: every array of the record flattened, in record order."""
    return np.concatenate([a.numpy().astype(np.float64).ravel() for a in record.values()])


def delta_vector(trained: ArrayRecord, global_record: ArrayRecord) -> np.ndarray:
    """(d,) trained - global; keys and shapes must match."""
    if list(trained.keys()) != list(global_record.keys()):
        raise SecAggError("the trained adapter's arrays differ from the global adapter's")
    return flat(trained) - flat(global_record)


def add_delta(global_record: ArrayRecord, delta: np.ndarray) -> ArrayRecord:
    """global + delta (d,), back into the record's keys and shapes, as float32."""
    out, start = {}, 0
    for key, array in global_record.items():
        values = array.numpy().astype(np.float64)
        size = values.size
        out[key] = Array((values + delta[start : start + size].reshape(values.shape)).astype(np.float32))
        start += size
    return ArrayRecord(out)
