"""Start Triton Inference Server on an engine folder, wait until it is ready, drain it on SIGTERM.

The `tritonserver` binary, its Python backend and a Python-backend stub per Python minor version come
from the `nvidia-pytriton` wheel (the `serve` extra); this module uses those files, not PyTriton's Python
API: PyTriton fails a whole dynamic batch, with a traceback as the message and an internal-error status,
when one request in it is bad, and the protocol needs a one-line INVALID_ARGUMENT for that request alone.
So the server runs a native model repository with our own Python-backend model (`model.py`).

What the stub needs (`check_environment`, checked before anything starts):
- the libpython of *this* interpreter's exact version. The stub is linked against `libpython3.X.so.1.0`
  and would take the system's (Debian's 3.11.2) while the stdlib comes from the environment's Python (a
  3.11.7 venv): the model then fails to load (`'_thread.RLock' object has no attribute
  '_recursion_count'`). We put this interpreter's LIBDIR first on LD_LIBRARY_PATH when it was built with
  a shared libpython (pyenv, python.org, the distribution's python3); otherwise the system's libpython must
  be the same release, or serving is refused with what to install.
- numpy < 2 in the environment (the stub's tensor conversion is built for numpy 1.x: BYTES inputs crash
  it under numpy 2). `pip install "pixart-export[serve]"` resolves that by itself; `dev.py` keeps a
  separate `.venv-serve` because the development environment is on numpy 2.

The engine folder is copied into the server's private working folder and that copy is validated with
`runtime.load` exactly as `run` validates a folder; the server loads only the copy, so changing or
tampering with the original while serving changes nothing that is served (and Triton polls nothing:
`--model-control-mode none`). The working folder is removed when the server stops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

LOG = logging.getLogger("pixart_export.serve")
MODEL = "pixart"
INSTALL = 'pip install "pixart-export[serve]" into an environment of its own (numpy < 2)'


@dataclass
class ServeOptions:
    address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_ms: float = 5.0
    drain_timeout: int = 30
    ready_timeout: float = 600.0
    threads: int | None = None


def distribution() -> Path:
    """The `tritonserver` folder of the installed nvidia-pytriton wheel (found without importing PyTriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"serving needs the `serve` extra (nvidia-pytriton): {INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise UserError(f"{root} has no bin/tritonserver: nvidia-pytriton ships it for x86-64 Linux (glibc >= 2.35)")
    return root


def _library_version(path: str) -> str:
    lib = ctypes.CDLL(path)
    lib.Py_GetVersion.restype = ctypes.c_char_p
    return lib.Py_GetVersion().decode().split()[0]


def check_environment() -> dict[str, str]:
    """The environment tritonserver needs so its Python-backend stub runs this interpreter's Python, or
    UserError saying what is missing."""
    import numpy

    root = distribution()
    if int(numpy.__version__.split(".")[0]) >= 2:
        raise UserError(
            f"this environment has numpy {numpy.__version__}; Triton's Python-backend stub needs numpy < 2: {INSTALL}"
        )
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "python_backend_stubs" / minor / "triton_python_backend_stub").exists():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {minor} (it has {', '.join(have)})")
    env = dict(os.environ)
    libname = f"libpython{minor}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and (Path(libdir) / libname).exists():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)
    else:
        found = ctypes.util.find_library(f"python{minor}")
        have = _library_version(found) if found else None
        if have != sys.version.split()[0]:
            raise UserError(
                f"Triton's Python-backend stub loads {libname} and this Python ({sys.version.split()[0]}, "
                f"{sys.executable}) has none of its own; the system's is "
                f"{'missing' if have is None else 'Python ' + have}. Create the environment with a Python built "
                "with a shared libpython (the distribution's python3, python.org, or pyenv with "
                "PYTHON_CONFIGURE_OPTS=--enable-shared)"
            )
    # the stub finds its Python (and so this environment's site-packages) through `python3` on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def model_config(manifest, options: ServeOptions, engine: Path) -> str:
    """config.pbtxt of the `pixart` model for this folder: the inputs its manifest supports."""
    buckets = [tuple(r) for r in manifest.resolutions]
    inputs = [
        '{ name: "prompt" data_type: TYPE_STRING dims: [ 1 ] }',
        '{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] }',
    ]
    if manifest.model.controlnet:
        inputs += [
            '{ name: "control_image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] optional: true '
            "allow_ragged_batch: true }",
            '{ name: "conditioning_scale" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
        ]
    if len(buckets) > 1:
        inputs += [
            '{ name: "height" data_type: TYPE_INT64 dims: [ 1 ] optional: true }',
            '{ name: "width" data_type: TYPE_INT64 dims: [ 1 ] optional: true }',
        ]
    h, w = buckets[0] if len(buckets) == 1 else (-1, -1)
    params = {"engine": str(engine), "threads": str(options.threads or "")}
    return "\n".join(
        [
            f'name: "{MODEL}"',
            'backend: "python"',
            f"max_batch_size: {options.max_batch}",
            "input [\n  " + ",\n  ".join(inputs) + "\n]",
            f'output [ {{ name: "image" data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] }} ]',
            f"dynamic_batching {{ max_queue_delay_microseconds: {int(options.max_queue_delay_ms * 1000)} }}",
            "instance_group [ { kind: KIND_CPU count: 1 } ]",
            *(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()),
            "",
        ]
    )


def prepare(engine: Path, work: Path, options: ServeOptions) -> tuple[Path, Path]:
    """Copy and validate the folder, write the model repository and the backend folder: (repository, backends)."""
    from .. import runtime

    if not (engine / "manifest.json").is_file():
        raise UserError(f"{engine} is not an engine folder (no manifest.json): build one with `pixart-export build`")
    copy = work / "engine"
    shutil.copytree(engine, copy, symlinks=False)
    pipe = runtime.load(copy)  # exactly what `run` checks; the server loads this copy and nothing else
    config = model_config(pipe.manifest, options, copy)
    del pipe
    repo = work / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(config)
    (repo / MODEL / "1" / "model.py").write_text(
        "from pixart_export.serve.model import TritonPythonModel  # noqa: F401\n"
    )
    root = distribution()
    python = work / "backends" / "python"
    python.mkdir(parents=True)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(root / "backends" / "python" / name)
    (python / "triton_python_backend_stub").symlink_to(
        root / "python_backend_stubs" / minor / "triton_python_backend_stub"
    )
    return repo, work / "backends"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the serving process dies, even by SIGKILL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve(engine: Path, options: ServeOptions, on_ready=None) -> int:
    """Run the server until SIGTERM or SIGINT, then drain it: 0 when every in-flight request finished."""
    env = check_environment()
    root = distribution()
    work = Path(tempfile.mkdtemp(prefix="pixart-serve-"))
    proc = None
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Triton drains: in-flight requests finish, new ones are refused

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        repo, backends = prepare(Path(engine), work, options)
        a = options.address
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={options.drain_timeout}",
            f"--http-address={a}",
            f"--http-port={options.http_port}",
            f"--grpc-address={a}",
            f"--grpc-port={options.grpc_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={a}",
            f"--metrics-port={options.metrics_port}",
            "--log-verbose=0",
        ]
        if stop["signal"] is not None:
            return 0
        proc = subprocess.Popen(
            cmd, env=env, cwd=work, stdout=sys.stderr, stderr=sys.stderr, preexec_fn=_die_with_parent
        )
        host = "127.0.0.1" if a in ("0.0.0.0", "") else a
        ready = f"http://{host}:{options.http_port}/v2/health/ready"
        deadline = time.monotonic() + options.ready_timeout
        while not _ready(ready):
            if proc.poll() is not None:
                if stop["signal"] is not None:
                    return 0
                raise UserError(
                    f"tritonserver exited ({proc.returncode}) before it was ready; its log is above "
                    "(a port in use, or the model failed to load)"
                )
            if time.monotonic() > deadline:
                raise UserError(f"the server was not ready after {options.ready_timeout:g} s; its log is above")
            time.sleep(0.2)
        if stop["signal"] is None:
            print(
                f"serving {engine} as model '{MODEL}': http://{host}:{options.http_port} "
                f"grpc {host}:{options.grpc_port} metrics http://{host}:{options.metrics_port}/metrics",
                flush=True,
            )
            if on_ready:
                on_ready()
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        if stop["signal"] is None:
            raise UserError(f"tritonserver stopped by itself ({proc.returncode}); its log is above")
        if proc.returncode != 0:
            LOG.warning(
                "tritonserver did not drain within --drain-timeout %d s (exit %d): requests or idle client "
                "connections were still open",
                options.drain_timeout,
                proc.returncode,
            )
            return 3
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
