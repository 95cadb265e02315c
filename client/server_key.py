"""The ServerApp's public keys on a node, and the sealing of train replies (encrypt-updates).

The keys arrive with the factors (config "server-key", the HPKE key, and "server-signing-key",
the Ed25519 key that signs secure aggregation's messages) and are remembered: in `context.state`
in simulation, in <data-dir>/.loraxs/server_key.pub in deployment. A node whose node config names
a key file (`server-key`, from `client.run --server-key FILE`) has the keys pinned: a message
carrying other keys is refused, and its updates are sealed to the pinned key even when the run
config does not ask for it (a relay cannot switch encryption off). Without a pin the node trusts
the first keys it sees and never replaces them (trust on first use): a message with other keys
is refused until the remembered file is deleted or the new key is pinned.
"""

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict

from shared.artifacts.cache import STATE_FOLDER
from shared.crypto.sealing import SealContext, ServerPublicKey, load_public_key, save_public_key
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS
from shared.federation.sealed_update import SEALED, seal_arrays

PINNED = "server-key"  # node config key: a public key file
KEY_RECORD, STORED_FILE = "loraxs.server-key", "server_key.pub"


def pinned_key(context: Context) -> ServerPublicKey | None:
    path = context.node_config.get(PINNED)
    return load_public_key(str(path)) if path else None


def remember_server_key(context: Context, raw: object, signing: object = None) -> None:
    """Keys that came with the factors: checked against the pin, else against the keys trusted
    first (remembered when there are none yet)."""
    key = ServerPublicKey.from_bytes(raw, signing)
    pinned = pinned_key(context)
    if pinned is not None:
        signing_differs = None not in (pinned.signing, key.signing) and pinned.signing != key.signing
        if pinned.raw != key.raw or signing_differs:  # an older pin (no signing key) checks the HPKE key only
            raise LoraXSError(
                f"the server key {key.fingerprint[:16]} differs from the pinned key "
                f"{pinned.fingerprint[:16]}: refusing to work for this server"
            )
        return
    stored = _stored_key(context)
    if stored is None:
        _store(context, key)
    elif stored != key:
        raise LoraXSError(
            f"the server key {key.fingerprint[:16]} differs from the key {stored.fingerprint[:16]} this "
            f"node trusted first ({_where(context)}): refusing; delete it, or pin the new key with "
            "--server-key, to trust another server"
        )


def server_key(context: Context) -> ServerPublicKey | None:
    """The pinned key, else the remembered one, else None."""
    pinned = pinned_key(context)
    return pinned if pinned is not None else _stored_key(context)


def _stored_key(context: Context) -> ServerPublicKey | None:
    data_dir = context.node_config.get("data-dir")
    if data_dir:
        path = Path(str(data_dir)) / STATE_FOLDER / STORED_FILE
        return load_public_key(path) if path.is_file() else None
    record = context.state.get(KEY_RECORD)
    return ServerPublicKey.from_bytes(record["key"], record.get("signing")) if record is not None else None


def _store(context: Context, key: ServerPublicKey) -> None:
    data_dir = context.node_config.get("data-dir")
    if data_dir:
        save_public_key(key, Path(str(data_dir)) / STATE_FOLDER / STORED_FILE)
    else:
        context.state[KEY_RECORD] = ConfigRecord({"key": key.raw, **({"signing": key.signing} if key.signing else {})})


def _where(context: Context) -> str:
    data_dir = context.node_config.get("data-dir")
    return str(Path(str(data_dir)) / STATE_FOLDER / STORED_FILE) if data_dir else "in this run's node state"


def seal_train_reply(
    content: RecordDict, msg: Message, context: Context, encrypt: bool, fingerprint: str, server_round: int
) -> RecordDict:
    """`content` with its "arrays" sealed when `encrypt` or a key is pinned; else as it is."""
    if ARRAYS not in content or not (encrypt or context.node_config.get(PINNED)):
        return content
    key = server_key(context)
    if key is None:
        raise LoraXSError("encrypt-updates is on, but this node has no server key to seal to")
    seal_context = SealContext(msg.metadata.run_id, server_round, context.node_id, fingerprint)
    content[SEALED] = seal_arrays(content[ARRAYS], key, seal_context)
    del content[ARRAYS]
    return content
