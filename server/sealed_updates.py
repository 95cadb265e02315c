"""The ServerApp's HPKE key and the opening of sealed train replies (`encrypt-updates = true`).

The key pair is generated per run, or loaded from `server-key-file` (created there, mode 0600,
when it does not exist yet, so that clients can pin the same key across runs). The public key is
written next to the report as `server_key.pub`: the file a client pins with `--server-key`.
See shared/federation/sealed_update.py for what travels.
"""

from pathlib import Path

from flwr.app import Message

from shared.crypto.sealing import (
    SealContext,
    SealError,
    ServerPrivateKey,
    load_private_key,
    save_private_key,
    save_public_key,
)
from shared.errors import LoraXSError
from shared.federation.protocol import ARRAYS
from shared.federation.sealed_update import SEALED, open_arrays

PUBLIC_KEY_FILE = "server_key.pub"


class UpdateSealing:
    def __init__(self, private_key: ServerPrivateKey):
        self.private_key = private_key

    @classmethod
    def for_run(cls, key_file: str, out_dir: Path, suite: str = "x25519") -> "UpdateSealing":
        """Loads `key_file` (or creates it, with `<key_file>.pub` beside it); "" = a fresh key.
        A new key is of `suite`; a loaded one must be."""
        if key_file and Path(key_file).exists():
            key = load_private_key(key_file)
            if key.suite != suite:
                raise LoraXSError(f"server key file {key_file} holds a {key.suite} key, but hpke-suite is {suite}")
        else:
            key = ServerPrivateKey.generate(suite)
            if key_file:
                save_private_key(key, key_file)
                save_public_key(key.public_key, f"{key_file}.pub")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_public_key(key.public_key, Path(out_dir) / PUBLIC_KEY_FILE)
        return cls(key)

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key.raw

    @property
    def signing_public_key(self) -> bytes:
        return self.private_key.public_key.signing

    def open_reply(self, reply: Message, run_id: int, server_round: int, fingerprint: str) -> str | None:
        """Replaces the reply's "sealed" record by the opened "arrays"; else why not (a str)."""
        content = reply.content
        if SEALED not in content:
            return "the update is not sealed (encrypt-updates is on)"
        if ARRAYS in content:
            return "the reply carries plain arrays next to the sealed update"
        try:
            context = SealContext(run_id, server_round, reply.metadata.src_node_id, fingerprint)
            content[ARRAYS] = open_arrays(content[SEALED], self.private_key, context)
        except SealError as err:
            return str(err)
        del content[SEALED]
        return None
