"""`pixart-export serve` as a child process on free loopback ports, for the tests and the load benchmark.

The server may run in another environment than the caller (the development environment is on numpy 2,
the serving one on numpy < 2): `serving_python` finds one that passes `server.check_environment`. The
child gets PR_SET_PDEATHSIG, so it is told to stop (SIGTERM: drain, exit) when its parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def serving_python() -> tuple[Path | None, str]:
    """(python of an environment that can run the server, why none can): $PIXART_SERVE_PYTHON,
    .venv-serve (made by `dev.py test`), then this interpreter."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None, "nvidia-pytriton's tritonserver exists for x86-64 Linux only"
    why = "none found"
    candidates = [os.environ.get("PIXART_SERVE_PYTHON"), str(ROOT / ".venv-serve" / "bin" / "python"), sys.executable]
    for python in filter(None, candidates):
        if not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", "from pixart_export.serve.server import check_environment; check_environment()"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode == 0:
            return Path(python), ""
        why = f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
    return None, f"no environment can run tritonserver's Python backend ({why}); run `python3 dev.py test`"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """`python -m pixart_export.cli serve ENGINE` on 127.0.0.1; ready when constructed."""

    def __init__(self, python: Path, engine: Path, log: Path, *extra: str, ready_timeout: float = 300):
        self.http, self.grpc, self.metrics = free_ports(3)
        ports = ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        self.log = Path(log)
        self.proc = subprocess.Popen(
            [str(python), "-m", "pixart_export.cli", "serve", str(engine), *ports, *extra],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            text=True,
            preexec_fn=_die_with_parent,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(ready_timeout)
        if not (line and line[0].startswith("serving ")):
            self.stop()
            raise RuntimeError(f"the server did not start: {line[:1]}\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM (drain), then wait; SIGKILL only past `timeout`. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tree_rss(self) -> int:
        """Resident bytes of the server process and every descendant (tritonserver, the model's stub)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total
