"""The ServerApp's HPKE public key on a node, and the sealing of train replies (encrypt-updates).

The key arrives with the factors (config "server-key") and is remembered like them: in
`context.state` in simulation, in <data-dir>/.loraxs/server_key.pub in deployment. A node whose
node config names a key file (`server-key`, from `client.run --server-key FILE`) has the key
pinned: a message carrying another key is refused, and its updates are sealed to the pinned key
even when the run config does not ask for it (a relay cannot switch encryption off).
Without a pin, a new key replaces the remembered one (trust on first use per factor shipment).
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


def remember_server_key(context: Context, raw: object) -> None:
    """A key that came with the factors: checked against the pin, then remembered."""
    key = ServerPublicKey.from_bytes(raw)
    pinned = pinned_key(context)
    if pinned is not None and pinned.raw != key.raw:
        raise LoraXSError(f"the server key {key.fingerprint[:16]} differs from the pinned key "
                          f"{pinned.fingerprint[:16]}: refusing to work for this server")
    data_dir = context.node_config.get("data-dir")
    if data_dir:
        save_public_key(key, Path(str(data_dir)) / STATE_FOLDER / STORED_FILE)
    else:
        context.state[KEY_RECORD] = ConfigRecord({"key": key.raw})


def server_key(context: Context) -> ServerPublicKey | None:
    """The pinned key, else the remembered one, else None."""
    pinned = pinned_key(context)
    if pinned is not None:
        return pinned
    data_dir = context.node_config.get("data-dir")
    if data_dir:
        path = Path(str(data_dir)) / STATE_FOLDER / STORED_FILE
        return load_public_key(path) if path.is_file() else None
    record = context.state.get(KEY_RECORD)
    return ServerPublicKey.from_bytes(record["key"]) if record is not None else None


def seal_train_reply(content: RecordDict, msg: Message, context: Context, encrypt: bool,
                     fingerprint: str, server_round: int) -> RecordDict:
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
