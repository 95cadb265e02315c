"""This device as a Flower SuperNode: `flower-supernode` serving this project's ClientApp with a
data folder passed as node config (`data-dir`). The ClientApp keeps its state (cached factors,
personal adapter) in `<data-dir>/.loraxs/`, since every Flower message runs in a fresh process.
"""

import signal
from dataclasses import dataclass
from pathlib import Path

from deployment.process_tree import ProcessTree, accepts_connections, exit_code, flower_command, flower_env, free_port
from shared.data.local_folder import infer_task, load_local_folder
from shared.errors import LoraXSError

RUNTIME_HOST = "127.0.0.1"  # the SuperNode's own Runtime API, for its flwr-clientapp processes


@dataclass(frozen=True)
class SuperNodeConfig:
    """superlink: the SuperLink's Fleet API as HOST:PORT.
    root_certificates: CA certificate that signed the SuperLink's (None with `insecure`, or to
    trust the system's CAs). auth_key: the SuperNode's ECDSA private key (OpenSSH format),
    registered with the SuperLink beforehand. runtime_port: the SuperNode's own Runtime API
    port (0 = a free one; every SuperNode on a machine needs its own)."""

    superlink: str
    data_dir: Path
    root_certificates: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    runtime_port: int = 0
    server_key: Path | None = None  # the ServerApp's public key file, pinned (node config server-key)
    secure_aggregation: bool = False  # take part in secure aggregation (node config secure-aggregation)
    runtime: str = "torch"  # "onnx": node config runtime = "onnx", trains through onnxruntime
    onnx_model_dir: Path | None = None  # its training artifacts (node config onnx-model-dir)

    def __post_init__(self):
        parse_address(self.superlink)
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.insecure and self.root_certificates:
            raise LoraXSError("--insecure and --root-certificates contradict each other; pick one")
        if self.runtime not in ("torch", "onnx"):
            raise LoraXSError(f"--runtime must be torch or onnx, got {self.runtime!r}")
        if self.onnx_model_dir is not None:
            object.__setattr__(self, "onnx_model_dir", Path(self.onnx_model_dir).expanduser().resolve())
        for flag, path in (
            ("--root-certificates", self.root_certificates),
            ("--auth-key", self.auth_key),
            ("--server-key", self.server_key),
        ):
            if path is not None and not Path(path).is_file():
                raise LoraXSError(f"{flag} file {path} does not exist")

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_address(self.superlink)


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[IPv6]:PORT') -> (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoraXSError(f"--superlink must be HOST:PORT, got {address!r}")
    return host, int(port)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    if not accepts_connections(*parse_address(address), timeout=timeout):
        raise LoraXSError(f"cannot reach SuperLink at {address}")


def check_data_folder(data_dir: Path, runtime: str = "torch") -> None:
    """Fail fast, before joining, on a folder the ClientApp could not read."""
    if runtime == "onnx":
        from shared.data.local_folder import read_local_rows

        read_local_rows(data_dir)  # without datasets, as the onnx node reads it
        return
    load_local_folder(data_dir, task=infer_task(data_dir))


def quoted_config_value(text: str) -> str:
    """A string as a TOML value that Flower's `key=value` parser keeps whole (spaces included)."""
    if "'" not in text and "\n" not in text:
        return f"'{text}'"  # TOML literal string: backslashes stay as they are
    if '"' not in text and "\n" not in text:
        return '"' + text.replace("\\", "\\\\") + '"'
    raise LoraXSError(f"{text!r} holds both kinds of quotes; Flower's config syntax cannot pass it")


def supernode_command(config: SuperNodeConfig, runtime_port: int) -> list[str]:
    node_config = (
        f"data-dir={quoted_config_value(str(config.data_dir))}"
        + (f" server-key={quoted_config_value(str(Path(config.server_key).resolve()))}" if config.server_key else "")
        + (" secure-aggregation=true" if config.secure_aggregation else "")
    )
    if config.runtime == "onnx":
        node_config += " runtime='onnx'" + (
            f" onnx-model-dir={quoted_config_value(str(config.onnx_model_dir))}" if config.onnx_model_dir else ""
        )
    command = [
        flower_command("flower-supernode"),
        "--superlink",
        config.superlink,
        "--node-config",
        node_config,
        "--host",
        RUNTIME_HOST,
        "--port",
        str(runtime_port),
    ]
    if config.insecure:
        command.append("--insecure")
    if config.root_certificates:
        command += ["--root-certificates", str(Path(config.root_certificates).resolve())]
    if config.auth_key:
        command += ["--auth-supernode-private-key", str(Path(config.auth_key).resolve())]
    return command


def start_supernode(config: SuperNodeConfig, log: Path | None = None, flwr_home: Path | None = None) -> ProcessTree:
    """Start the SuperNode (no checks); the caller must `stop()` it."""
    port = config.runtime_port or free_port(RUNTIME_HOST)
    return ProcessTree(supernode_command(config, port), flower_env(flwr_home), log=log)


def run_supernode(config: SuperNodeConfig) -> int:
    """Join the federation in the foreground until the SuperNode exits or we get SIGINT/SIGTERM
    (forwarded to it); returns its exit status. It is never left running."""
    check_data_folder(config.data_dir, config.runtime)
    if config.runtime == "onnx":
        from client.onnx_training.folder import open_training_folder

        open_training_folder(config.onnx_model_dir or config.data_dir / ".loraxs" / "onnx-training")
    check_reachable(config.superlink)
    started: list[ProcessTree] = []
    forwarded: list[int] = []

    def forward(signum, _frame):
        forwarded.append(signum)
        for process in started:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        started.append(start_supernode(config))
        returncode = started[0].wait()
    finally:
        for process in started:
            returncode = process.stop(sig=forwarded[0] if forwarded else signal.SIGTERM)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code(returncode)
