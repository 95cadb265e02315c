"""The ServerApp: thin Flower glue around server/federation.py.

`app` reads its settings from the run config (`flwr run .`); `make_server_app(config)` binds
them instead (the in-process simulation of `flower-simulation`, whose run config is empty) and
hands the report to `on_report`; `started` is when the wall time starts (the command's start);
`wrap_grid` puts a layer around Flower's Grid (the simulation's silent nodes, `--fail-rate`).
"""

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from shared.federation.run_config import FederationConfig


def make_server_app(
    config: FederationConfig | None = None,
    progress: bool = False,
    on_report: Callable[[dict], None] | None = None,
    started: float | None = None,
    wrap_grid: Callable[[Grid], Grid] | None = None,
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or FederationConfig.from_run_config(context.run_config)
        if wrap_grid is not None:
            grid = wrap_grid(grid)
        report = run_federation(grid, run_config, progress=progress, started=started)
        if on_report is not None:
            on_report(report)

    return server_app


app = make_server_app()
