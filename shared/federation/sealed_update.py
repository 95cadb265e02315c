"""Train updates sealed to the ServerApp (`encrypt-updates = true`): relays store only ciphertext.

Added to the message contract of shared/federation/protocol.py:
  down  config "server-key": the ServerApp's raw HPKE public key (bytes), and "server-signing-key":
        its Ed25519 public key (32 B, shared/crypto/signing.py), in every message that carries
        "basis" or its recipe (the first one to a node, or a resend); the node remembers both.
  up    train reply "sealed" ConfigRecord {"update": bytes} in place of "arrays":
          update    = HPKE.Seal(server key, info = SealContext(run id, round, node id, fingerprint),
                            plaintext = protobuf of the "arrays" ArrayRecord (Flower's serde, no pickle))
        "metrics" and "status" stay in the clear (num-examples, train-loss, fingerprint).
The server opens the update before any other check; whatever does not open (tampered, another
round / node / basis / key, truncated, random bytes) or does not parse is a rejection reason.
"""

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.serde import array_record_from_proto, array_record_to_proto
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

from shared.crypto.sealing import (
    SealContext,
    SealError,
    ServerPrivateKey,
    ServerPublicKey,
    open_update,
    seal_update,
)

SERVER_KEY, SERVER_SIGNING_KEY, SEALED, SEALED_UPDATE = "server-key", "server-signing-key", "sealed", "update"


def seal_arrays(arrays: ArrayRecord, server_key: ServerPublicKey, context: SealContext) -> ConfigRecord:
    """The "sealed" record of a train reply."""
    plaintext = array_record_to_proto(arrays).SerializeToString()
    return ConfigRecord({SEALED_UPDATE: seal_update(plaintext, server_key, context)})


def open_arrays(sealed: object, server_key: ServerPrivateKey, context: SealContext) -> ArrayRecord:
    """The ArrayRecord inside a "sealed" record, or SealError with a one-line reason."""
    if not isinstance(sealed, ConfigRecord) or list(sealed.keys()) != [SEALED_UPDATE]:
        raise SealError(f"the sealed record must hold exactly {SEALED_UPDATE!r}")
    plaintext = open_update(sealed[SEALED_UPDATE], server_key, context)
    try:  # authentic, but anyone can seal to a public key: parse it as hostile input
        return array_record_from_proto(ProtoArrayRecord.FromString(plaintext))
    except Exception as err:
        raise SealError(f"the opened update is not an adapter record ({type(err).__name__})") from None
