"""Flower processes this project starts (SuperLink, SuperNode) and everything they start in turn.

Flower's processes spawn more processes (flower-superexec, flwr-clientapp, flwr-serverapp), some
of them in a session of their own, so stopping only the direct child is not enough: `stop_tree`
signals the child, waits, then terminates and finally kills every descendant it saw.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from shared.errors import LoraXSError

FLOWER_ENV = {  # no `uv sync` (GBs), no telemetry, no update check: nothing downloads at run time
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


def flower_command(name: str) -> str:
    """A Flower console script of this interpreter's environment (e.g. the venv's bin/)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    raise LoraXSError(f"{name} not found next to {sys.executable}; is flwr installed in this environment?")


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for a Flower process: FLOWER_ENV, this environment's bin/ first on PATH
    (Flower starts flower-superexec / flwr-clientapp by name), and an optional FLWR_HOME."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def accepts_connections(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, process: "ProcessTree", timeout: float, what: str) -> None:
    """Until `host:port` accepts connections; LoraXSError if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise LoraXSError(f"{what} exited with code {process.returncode} before listening on {host}:{port}")
        if accepts_connections(host, port, timeout=0.5):
            return
        time.sleep(0.2)
    raise LoraXSError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


class ProcessTree:
    """A started process and every descendant seen so far (Flower detaches some of them, so the
    tree is watched while it runs: `wait` and `refresh` record new descendants)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path | None = None, cwd: Path | None = None):
        # Own session: a terminal's Ctrl-C reaches only us, and we forward it. Without a log the
        # output goes to our own stdout/stderr.
        if log is None:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
        else:
            with open(log, "ab") as out:
                self.process = subprocess.Popen(
                    command,
                    env=env,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        self._seen: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def refresh(self) -> None:
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc)
        roots = [self.pid, *self._seen]  # seen ones may have been orphaned (re-parented)
        while roots:
            for child in children.get(roots.pop(), []):
                if child.pid not in self._seen:
                    self._seen[child.pid] = child
                    roots.append(child.pid)

    def alive_pids(self) -> set[int]:
        """The process and its descendants that still run."""
        self.refresh()
        pids = {p.pid for p in self._seen.values() if _running(p)}
        return pids | ({self.pid} if self.process.poll() is None else set())

    def send_signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code, or None if it still runs after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.process.poll() is None:
            self.refresh()
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                self.process.wait(left)
            except subprocess.TimeoutExpired:
                pass
        return self.process.returncode

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Stop the process (gracefully: `sig`, then SIGKILL after `timeout`) and every
        descendant seen; returns its exit code."""
        self.refresh()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait()
        self.refresh()
        alive = [p for p in self._seen.values() if _running(p)]
        for proc in alive:
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(alive, timeout=min(timeout, 5.0))
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5.0)
        return self.process.returncode


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def exit_code(returncode: int) -> int:
    """A child's return code as a shell exit status (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def pids_with_environment(variable: str, value: str) -> list[int]:
    """Processes whose environment holds `variable=value`: everything a tagged command started,
    however detached (Linux /proc; processes not ours to read are skipped)."""
    needle = f"{variable}={value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue  # gone, or not ours to read
    return found
