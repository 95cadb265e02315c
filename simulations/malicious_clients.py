"""`--malicious-fraction F`: a seeded share F of the simulated clients poison every update.

A malicious client trains honestly, then uploads global + k * (its R - global) for every array
(r x r matrices and head), with k from `malicious-attack`:
  flip-scale  k = -10 (the default: the sign flipped and scaled ten times),
  flip        k = -1,
  scale       k = 10.
The updates are well formed (right keys, shapes, finite), so the layer's checks pass them: only
the aggregator (FedMedian, FedTrimmedAvg, Krum, or norm bounding = dp server-fixed with zero
noise) can limit them. Which partitions are malicious is a pure function of (seed, num-clients).
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from shared.federation.protocol import ARRAYS, CONFIG
from shared.federation.run_config import FederationConfig

MALICIOUS_STREAM = 17
ATTACK_FACTORS = {"flip-scale": -10.0, "flip": -1.0, "scale": 10.0}


def malicious_partitions(config: FederationConfig) -> set[int]:
    count = round(config.malicious_fraction * config.num_clients)
    rng = np.random.default_rng([config.seed, MALICIOUS_STREAM])
    return {int(p) for p in rng.choice(config.num_clients, size=count, replace=False)} if count else set()


def poisoned(sent: ArrayRecord, honest: ArrayRecord, factor: float) -> ArrayRecord:
    """global + factor * (honest - global), per array, in the honest update's dtype."""
    out = {}
    for key in honest.keys():
        start, mine = sent[key].numpy().astype(np.float64), honest[key].numpy()
        out[key] = Array((start + factor * (mine.astype(np.float64) - start)).astype(mine.dtype))
    return ArrayRecord(out)


def malicious_client_app(inner: ClientApp, config: FederationConfig) -> ClientApp:
    bad = malicious_partitions(config)
    factor = ATTACK_FACTORS[config.malicious_attack]
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sent = msg.content[ARRAYS] if ARRAYS in msg.content else None
        reply = inner(msg, context)
        partition = int(context.node_config.get("partition-id", -1))
        if (
            partition in bad
            and sent is not None
            and not reply.has_error()
            and ARRAYS in reply.content
            and CONFIG in msg.content
        ):
            reply.content[ARRAYS] = poisoned(sent, reply.content[ARRAYS], factor)
        return reply

    app.evaluate()(inner)
    app.query()(inner)
    return app
