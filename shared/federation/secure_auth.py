"""Secure aggregation's messages authenticated end to end, past the relay (the SuperLink).

Down: the ServerApp signs what it tells the clients (shared/crypto/signing.py): the setup (train
config "setup-signature"), the key directory, each client's share inbox with its weight bound,
and the survivor lists (stage config "signature"). A statement binds the stage, run id, round,
basis fingerprint, a digest of the setup (so the participants and threshold) and, for the inbox,
its recipient. A client checks each one with the server's signing key that it pinned (or trusted
first) before acting on it.
Up: every stage reply (the stage-1 keys in the train reply, then the boxes, the masked vector, the
revealed shares) is sealed to the server's HPKE key, with the stage in the HPKE info; only
"metrics" and "status" stay in the clear:
    "sealed" {"update": HPKE.Seal(server key, info = SealContext(run, round, node, fingerprint, stage),
                                  protobuf of the RecordDict of the stage's records)}
"""

from collections.abc import Mapping

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from shared.crypto.sealing import SealContext, SealError, ServerPrivateKey, ServerPublicKey, open_update, seal_update
from shared.crypto.secagg.params import SecAggParams
from shared.crypto.signing import Statement, record_digest, sign, verify
from shared.federation.sealed_update import SEALED, SEALED_UPDATE

SETUP_SIGNATURE, SIGNATURE = "setup-signature", "signature"
SETUP, KEYS, SHARE_KEYS, MASKED, UNMASK = "setup", "keys", "share-keys", "masked", "unmask"  # stage names


def statement(
    stage: str, params: SecAggParams, fingerprint: str, setup_digest: bytes, content: Mapping, recipient: int = 0
) -> Statement:
    return Statement(
        stage, params.run_id, params.server_round, fingerprint, setup_digest, record_digest(content), recipient
    )


def sign_statement(private_key: ServerPrivateKey, *args, **kwargs) -> bytes:
    return sign(private_key.signing_key, statement(*args, **kwargs))


def check_statement(server_key: ServerPublicKey | None, signature: object, *args, **kwargs) -> None:
    """Returns when the server signed this; else SignatureError (a SecAggError-like user error)."""
    verify(server_key.signing if server_key is not None else None, signature, statement(*args, **kwargs))


def seal_stage(records: dict, server_key: ServerPublicKey, context: SealContext) -> ConfigRecord:
    """The "sealed" record of a stage reply: its records, sealed with the stage in the info."""
    plaintext = recorddict_to_proto(RecordDict(records)).SerializeToString()
    return ConfigRecord({SEALED_UPDATE: seal_update(plaintext, server_key, context)})


def open_stage(content: RecordDict, private_key: ServerPrivateKey, context: SealContext) -> RecordDict:
    """The stage records inside a reply's "sealed" record, or SealError with a one-line reason."""
    sealed = content[SEALED] if SEALED in content else None
    if not isinstance(sealed, ConfigRecord) or list(sealed.keys()) != [SEALED_UPDATE]:
        raise SealError(f"the {context.stage} reply is not sealed to the server key")
    plaintext = open_update(sealed[SEALED_UPDATE], private_key, context)
    try:  # authentic to nobody (anyone can seal to a public key): parsed as hostile input
        return recorddict_from_proto(ProtoRecordDict.FromString(plaintext))
    except Exception as err:
        raise SealError(f"the opened {context.stage} reply is not a record ({type(err).__name__})") from None
