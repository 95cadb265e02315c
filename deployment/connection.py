"""The `flwr` CLI's connection to a SuperLink: a private FLWR_HOME with a `config.toml`.

Flower 1.42 reads connections from `$FLWR_HOME/config.toml`:

    [superlink]
    default = "loopback"

    [superlink.loopback]
    address = "127.0.0.1:PORT"          # the SuperLink's Control API (one port serves all APIs)
    insecure = true                     # or: root-certificates = "/abs/ca.crt"

so that `flwr run . loopback` submits the run there.
"""

from pathlib import Path

import tomli_w


def write_flwr_config(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None) -> Path:
    connection: dict[str, object] = {"address": address}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: connection}}), encoding="utf-8")
    return path
