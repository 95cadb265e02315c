"""A SuperLink and N SuperNodes on loopback, optionally with TLS and SuperNode authentication.

    python -m deployment.local --data DIR1 DIR2 ... [--supernodes N] [--tls] [--auth]
                                      [--workdir W] [--connection NAME] [--secure-aggregation]

starts `flower-superlink` on a free port of 127.0.0.1 (state in W/superlink.db), writes a private
FLWR_HOME (W/flwr-home/config.toml) with a connection NAME for `flwr run . NAME`, registers the
SuperNode keys (--auth), starts one SuperNode per data folder (the same code path as
`python -m client.run --data DIR --superlink HOST:PORT`), prints the `flwr run` command and
waits; Ctrl-C stops everything it started. Logs: W/superlink.log, W/supernode-<i>.log.
`LocalDeployment` is the same thing as a context manager, for tests and benchmarks.
"""

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deployment.certificates import CertificatePaths, certificate_paths, make_certificates
from deployment.connection import write_flwr_config
from deployment.process_tree import FLOWER_ENV, ProcessTree, flower_command, flower_env, free_port, wait_for_port
from deployment.supernode import SuperNodeConfig, check_data_folder, start_supernode
from shared.cli import run_cli
from shared.errors import LoraXSError

HOST = "127.0.0.1"
DEFAULT_WORKDIR = Path("runs/deployment")
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DeploymentConfig:
    """data_dirs: one SuperNode per folder. tls: the SuperLink serves HTTPS with a certificate
    from a local CA. auth: only SuperNodes whose public keys were registered may join."""

    data_dirs: tuple[Path, ...]
    workdir: Path = DEFAULT_WORKDIR
    tls: bool = False
    auth: bool = False
    connection: str = "loopback"
    secure_aggregation: bool = False  # the SuperNodes take part in secure aggregation (their own node config)
    runtime: str = "torch"  # "onnx": every SuperNode trains through onnxruntime (node config runtime = "onnx")
    onnx_model_dir: Path | None = None  # their training artifacts (default: <data dir>/.loraxs/onnx-training)

    def __post_init__(self):
        dirs = tuple(Path(d).expanduser().resolve() for d in self.data_dirs)
        object.__setattr__(self, "data_dirs", dirs)
        object.__setattr__(self, "workdir", Path(self.workdir).expanduser().resolve())
        if not dirs:
            raise LoraXSError("give at least one data folder (--data DIR ...), one per SuperNode")
        if len(set(dirs)) != len(dirs):
            raise LoraXSError("every SuperNode needs its own data folder (its state lives there)")
        if self.auth and not self.tls:
            raise LoraXSError("SuperNode authentication needs TLS: set tls as well")
        if not self.connection.replace("-", "").replace("_", "").isalnum():
            raise LoraXSError(f"--connection must be a plain name, got {self.connection!r}")


class LocalDeployment:
    """Starts the SuperLink and SuperNodes on `__enter__` and stops every process on `__exit__`."""

    def __init__(self, config: DeploymentConfig):
        self.config = config
        self.port = 0
        self.certificates: CertificatePaths | None = None
        self.superlink: ProcessTree | None = None
        self.supernodes: list[ProcessTree] = []

    # -- paths and commands ---------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.config.workdir / "flwr-home"

    def cli_env(self) -> dict[str, str]:
        """Environment for the `flwr` CLI: the private FLWR_HOME, no uv sync, no telemetry."""
        return flower_env(self.flwr_home)

    def flwr_run_command(self, app_dir: str = ".", run_config: str | None = None, stream: bool = True) -> list[str]:
        command = [flower_command("flwr"), "run", app_dir, self.config.connection]
        if run_config:
            command += ["--run-config", run_config]
        return command + (["--stream"] if stream else [])

    def shell_run_command(self, run_config: str | None = None) -> str:
        """The `flwr run` command to type in the project folder, environment included."""
        env = {"FLWR_HOME": str(self.flwr_home), **FLOWER_ENV}
        command = ["flwr", *self.flwr_run_command(run_config=run_config)[1:]]
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "LocalDeployment":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        config = self.config
        for data_dir in config.data_dirs:
            check_data_folder(data_dir)
        config.workdir.mkdir(parents=True, exist_ok=True)
        if config.tls or config.auth:
            self.certificates = self._certificates()
        self.port = free_port(HOST)
        self.superlink = ProcessTree(
            self._superlink_command(),
            flower_env(config.workdir / "superlink-home"),
            log=config.workdir / "superlink.log",
            cwd=config.workdir,
        )
        wait_for_port(HOST, self.port, self.superlink, START_TIMEOUT_S, "flower-superlink")
        write_flwr_config(
            self.flwr_home,
            config.connection,
            self.address,
            self.certificates.ca_cert if config.tls else None,
        )
        if config.auth:
            for key in self.certificates.supernode_keys:
                self._flwr("supernode", "register", f"{key}.pub", config.connection)
        for i, data_dir in enumerate(config.data_dirs):
            node = SuperNodeConfig(
                superlink=self.address,
                data_dir=data_dir,
                root_certificates=self.certificates.ca_cert if config.tls else None,
                auth_key=self.certificates.supernode_keys[i] if config.auth else None,
                insecure=not config.tls,
                secure_aggregation=config.secure_aggregation,
                runtime=config.runtime,
                onnx_model_dir=config.onnx_model_dir,
            )
            self.supernodes.append(
                start_supernode(
                    node,
                    log=config.workdir / f"supernode-{i}.log",
                    flwr_home=config.workdir / f"supernode-{i}-home",
                )
            )

    def _certificates(self) -> CertificatePaths:
        """The workdir's certificates when complete, fresh ones when there are none."""
        folder = self.config.workdir / "certificates"
        paths = certificate_paths(folder, len(self.config.data_dirs))
        present = [p.is_file() for p in paths.all_files()]
        if all(present):
            return paths
        if any(present):
            raise LoraXSError(
                f"{folder} is incomplete for {len(self.config.data_dirs)} SuperNodes; remake it with "
                f"python -m deployment.certificates {folder} --supernodes {len(self.config.data_dirs)} --force"
            )
        return make_certificates(folder, len(self.config.data_dirs))

    def _superlink_command(self) -> list[str]:
        command = [
            flower_command("flower-superlink"),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--database",
            str(self.config.workdir / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.config.tls:
            certs = self.certificates
            command += [
                "--ssl-ca-certfile",
                str(certs.ca_cert),
                "--ssl-certfile",
                str(certs.server_cert),
                "--ssl-keyfile",
                str(certs.server_key),
            ]
        else:
            command.append("--insecure")
        if self.config.auth:
            command.append("--enable-supernode-auth")
        return command

    def _flwr(self, *args: str, timeout: float = 60.0) -> str:
        """Run a `flwr` CLI command against this deployment; its stdout."""
        try:
            done = subprocess.run(
                [flower_command("flwr"), *args],
                env=self.cli_env(),
                cwd=self.config.workdir,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise LoraXSError(
                f"flwr {' '.join(args[:2])} did not answer within {timeout:.0f} s "
                "(the SuperLink or the machine is overloaded)"
            ) from None
        if done.returncode != 0:
            detail = (done.stdout + done.stderr).strip().splitlines()
            raise LoraXSError(f"flwr {' '.join(args[:2])} failed: {detail[-1] if detail else done.returncode}")
        return done.stdout

    def online_supernodes(self, timeout: float = 60.0) -> int:
        listing = json.loads(
            self._flwr("supernode", "list", self.config.connection, "--format", "json", timeout=timeout)
        )
        return sum(1 for node in listing.get("nodes", []) if node.get("status") == "online")

    def wait_for_supernodes(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every SuperNode is online; LoraXSError if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            # a loaded SuperLink may answer slowly: wait for the answer up to the deadline
            if self.online_supernodes(timeout=max(1.0, deadline - time.monotonic())) >= len(self.supernodes):
                return
            time.sleep(1.0)
        raise LoraXSError(f"not all {len(self.supernodes)} SuperNodes came online within {timeout:.0f} s")

    def check_running(self) -> None:
        for name, process in self._processes():
            if process.returncode is not None:
                raise LoraXSError(f"{name} exited with code {process.returncode} (see {self.config.workdir})")

    def run(
        self, app_dir: str | Path, run_config: str | None = None, timeout: float = 600.0
    ) -> subprocess.CompletedProcess:
        """`flwr run APP_DIR <connection> --stream` until the run ends; output in the workdir."""
        with open(self.config.workdir / "flwr-run.log", "ab") as log:
            return subprocess.run(
                self.flwr_run_command(".", run_config),
                env=self.cli_env(),
                cwd=app_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )

    def alive_pids(self) -> set[int]:
        return set().union(*(process.alive_pids() for _, process in self._processes()))

    def _processes(self) -> list[tuple[str, ProcessTree]]:
        named = [(f"supernode-{i}", p) for i, p in enumerate(self.supernodes)]
        return named + ([("flower-superlink", self.superlink)] if self.superlink else [])

    def stop(self) -> None:
        """SuperNodes first, then the SuperLink; every process they started goes with them."""
        for _, process in self._processes():
            process.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployment.local",
        description="Start a SuperLink and one SuperNode per data folder on 127.0.0.1; Ctrl-C stops them.",
    )
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="one data folder per SuperNode")
    parser.add_argument("--supernodes", type=int, help="number of SuperNodes (must equal the number of --data)")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a local CA (W/certificates)")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help=f"state and logs (default {DEFAULT_WORKDIR})")
    parser.add_argument("--connection", default="loopback", help="connection name for `flwr run . NAME`")
    parser.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="the SuperNodes agree to secure aggregation (node config secure-aggregation=true)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_requested: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _: stop_requested.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }

    def work() -> int:
        if args.supernodes is not None and args.supernodes != len(args.data):
            raise LoraXSError(
                f"--supernodes {args.supernodes} but {len(args.data)} --data folders; give one per SuperNode"
            )
        config = DeploymentConfig(
            data_dirs=tuple(args.data),
            workdir=args.workdir,
            tls=args.tls or args.auth,
            auth=args.auth,
            connection=args.connection,
            secure_aggregation=args.secure_aggregation,
        )
        with LocalDeployment(config) as deployment:
            print(
                f"SuperLink at {deployment.address} ({'TLS' if config.tls else 'insecure'}"
                f"{', SuperNode auth' if config.auth else ''}); logs in {config.workdir}"
            )
            for data_dir in config.data_dirs:
                print(f"SuperNode with data {data_dir}")
            print("submit a run from the project folder with:")
            print(f"  {deployment.shell_run_command()}")
            print("Ctrl-C stops everything.", flush=True)
            while not stop_requested:
                deployment.check_running()
                time.sleep(0.5)
            print("stopping ...", flush=True)
        return 0

    try:
        return run_cli(work)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
