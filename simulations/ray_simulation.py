"""Run the ServerApp and the ClientApps with Flower's Ray simulation backend, in this process.

`flwr.simulation.run_simulation` leaves `context.run_config` empty, so the apps are built with
the configuration bound (`make_server_app(config)` / `make_client_app(config)`); Ray pickles
the ClientApp, config included, into its worker processes. Ray is shut down before returning,
whatever happened, so no process outlives the run.

Ray is started here, not by Flower's backend (which then reuses it): a private local instance
(`address="local"`, whatever `RAY_ADDRESS` or `/tmp/ray/ray_current_cluster` say, so a gone
head can never hang the run), or, with `ray_address`, the cluster there, checked to answer
within `CONNECT_TIMEOUT` first. Our SIGTERM/SIGINT handler is installed after `ray.init` (which
installs its own): one line, Ray shut down (bounded), exit 143 / 130.
"""

import logging
import os
import signal
import socket
import sys
import threading

from client.app import make_client_app
from server.app import make_server_app
from shared.errors import LoraXSError
from shared.federation.run_config import FederationConfig
from simulations.failing_clients import SilencedGrid, failing_client_app
from simulations.malicious_clients import malicious_client_app
from simulations.quiet_logs import quiet_logs

CONNECT_TIMEOUT = 5.0  # seconds for an attached cluster's head to accept a connection
SHUTDOWN_TIMEOUT = 10.0  # seconds Ray gets to shut down after a signal


def run_ray_simulation(
    config: FederationConfig,
    client_cpus: float = 1.0,
    progress: bool = False,
    started: float | None = None,
    ray_address: str = "",
    on_stop=None,
) -> dict:
    """Runs the whole federation on `config.num_clients` simulated SuperNodes; returns the report
    (written by the ServerApp; its wall time counts from `started`, e.g. with Ray's start).
    `on_stop`: called after Ray is shut down when a signal stops the run (e.g. removing a
    half-made run folder)."""
    import ray
    from flwr.simulation import run_simulation

    if ray_address:
        check_reachable(ray_address)
    reports: list[dict] = []
    failing = config.fail_rate > 0
    server_app = make_server_app(
        config,
        progress=progress,
        on_report=reports.append,
        started=started,
        wrap_grid=(lambda grid: SilencedGrid(grid, config)) if failing else None,
    )
    client_app = make_client_app(config, torch_threads=max(1, int(client_cpus)))
    if config.malicious_fraction > 0:
        client_app = malicious_client_app(client_app, config)
    if failing:
        client_app = failing_client_app(client_app, config)
    backend_config = {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}}
    try:
        with quiet_logs():
            os.environ.pop("RAY_ADDRESS", None)  # it would override the address below
            pythonpath = os.pathsep.join(sys.path)  # as Flower's backend passes it to the workers
            ray.init(
                address=ray_address or "local",
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
                configure_logging=True,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            )
            stop_cleanly_on_signals(on_stop)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=config.num_clients,
                backend_name="ray",
                backend_config=backend_config,
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if not reports:
        raise LoraXSError("the simulation ended without a report (see the errors above)")
    return reports[0]


def check_reachable(address: str) -> None:
    """HOST:PORT of a Ray head (GCS) must accept a TCP connection within CONNECT_TIMEOUT."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise LoraXSError(f"--ray-address {address!r} is not HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        raise LoraXSError(
            f"no Ray cluster answers at {address} within {CONNECT_TIMEOUT:.0f} s ({err.strerror or type(err).__name__})"
        ) from None


def stop_cleanly_on_signals(on_stop=None) -> None:
    """SIGTERM / SIGINT: one line, Ray shut down (at most SHUTDOWN_TIMEOUT), `on_stop()`, exit
    128 + signal, without the interpreter's teardown (where Ray's native threads print "Aborted")."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        print(
            f"flower-simulation: stopped by {signal.Signals(signum).name}; shutting Ray down",
            file=sys.stderr,
            flush=True,
        )
        import ray

        closer = threading.Thread(target=ray.shutdown, daemon=True)
        closer.start()
        closer.join(SHUTDOWN_TIMEOUT)
        if on_stop is not None:
            try:
                on_stop()
            except Exception as err:
                print(f"flower-simulation: cleanup failed: {err}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
