"""Run the ServerApp and the ClientApps with Flower's Ray simulation backend, in this process.

`flwr.simulation.run_simulation` leaves `context.run_config` empty, so the apps are built with
the configuration bound (`make_server_app(config)` / `make_client_app(config)`); Ray pickles
the ClientApp, config included, into its worker processes. Ray is shut down before returning,
whatever happened, so no process outlives the run.
"""

import logging

from client.app import make_client_app
from server.app import make_server_app
from shared.federation.run_config import FederationConfig
from shared.errors import LoraXSError
from simulations.quiet_logs import quiet_logs


def run_ray_simulation(config: FederationConfig, client_cpus: float = 1.0, progress: bool = False,
                       started: float | None = None) -> dict:
    """Runs the whole federation on `config.num_clients` simulated SuperNodes; returns the report
    (written by the ServerApp; its wall time counts from `started`, e.g. with Ray's start)."""
    import ray
    from flwr.simulation import run_simulation

    reports: list[dict] = []
    server_app = make_server_app(config, progress=progress, on_report=reports.append, started=started)
    client_app = make_client_app(config, torch_threads=max(1, int(client_cpus)))
    backend_config = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False,
                      "include_dashboard": False, "configure_logging": True},
    }
    try:
        with quiet_logs():
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=config.num_clients, backend_name="ray",
                           backend_config=backend_config)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if not reports:
        raise LoraXSError("the simulation ended without a report (see the errors above)")
    return reports[0]
