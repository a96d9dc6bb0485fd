"""A throw-away JupyterLab server for browser tests: its own port, token, settings and runtime dirs.

Notebooks are copied into a temporary root, so running (and autosaving) them in the
browser never writes outputs into the repository's notebooks.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Settings that make every cell render and keep the page quiet and offline.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
# For a server started as ``make lab`` starts it: the news setting is left to the environment's overrides.json.
COURSE_SETTINGS = {k: v for k, v in LAB_SETTINGS.items() if "notification" not in k}


@dataclass
class LabServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # what the server serves
    process: subprocess.Popen
    log_path: Path

    def lab_url(self, path: str) -> str:
        """The JupyterLab page that opens ``path`` (relative to the root), with the token in the query."""
        return f"{self.url}/lab/tree/{path}?token={self.token}&reset"

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return text[-chars:]

    def api(self, path: str, method: str = "GET") -> dict | None:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(settings_dir: Path, settings: dict[str, dict] | None = None) -> None:
    for plugin, values in (LAB_SETTINGS if settings is None else settings).items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def make_lab_command() -> list[str]:
    """``make lab``'s own command line (``make -s lab-command`` prints it), so a test cannot drift from it."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "lab-command"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    words = shlex.split(out)
    if not words or not re.search(r"(^|/)jupyter$", words[0]) or words[1:2] != ["lab"]:
        raise RuntimeError(f"make lab-command printed {out!r}, not a `jupyter lab ...` command line")
    return words


def start_lab(
    root: Path,
    work: Path,
    timeout_s: float = 90.0,
    lab_args: list[str] | None = None,
    settings: dict[str, dict] | None = None,
) -> LabServer:
    """Start ``jupyter lab`` on 127.0.0.1 serving ``root``; raise RuntimeError with its log if it is not up in time.

    ``lab_args``: the arguments of ``make lab`` after ``jupyter lab`` (they replace the root option here; the
    server still gets its own port, token and settings). ``settings``: user settings (default LAB_SETTINGS).
    """
    for name in ("config", "data", "runtime", "ipython", "settings", "workspaces"):
        (work / name).mkdir(parents=True, exist_ok=True)
    write_settings(work / "settings", settings)
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ | {
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_DATA_DIR": str(work / "data"),  # kernels and lab extensions still come from sys.prefix
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "IPYTHONDIR": str(work / "ipython"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        *([f"--ServerApp.root_dir={root}"] if lab_args is None else [a for a in lab_args if a != "--allow-root"]),
        f"--LabApp.user_settings_dir={work / 'settings'}",
        f"--LabApp.workspaces_dir={work / 'workspaces'}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners often run as root
    log_path = work / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115 -- closed with the process in stop_lab
    process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.api("/api/status")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    stop_lab(server)
    raise RuntimeError(f"jupyter lab did not answer within {timeout_s:.0f} s:\n{server.log_tail()}")


def stop_lab(server: LabServer, timeout_s: float = 15.0) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure its process group is gone."""
    if server.process.poll() is None:
        try:
            server.api("/api/shutdown", method="POST")
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGTERM)
            try:
                server.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
    try:  # kernels the server started live in its session; end any left behind
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
