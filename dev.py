#!/usr/bin/env python3
"""One-command set-up and tasks for a fresh clone: needs only python3.

    python3 dev.py demo    # create .venv if needed, draw with the reference, build the tiny ort-cpu
                           # engine (with the tiny ControlNet) and draw the same image with it; then
                           # the same prompt controlled by an edge map, shown side by side with the
                           # control image and the uncontrolled image (out/controlnet_demo.png)
    python3 dev.py test    # create .venv (and .venv-serve) if needed, run the default test suite

The virtual environment lives in `.venv` inside the repository. It is (re)installed when the files
that define it change: the install is keyed by a hash of pyproject.toml and this file, never by
"the folder exists". torch is pinned to the CPU build (2.13.0, which pip takes from a local wheel on
our machines) *before* the project is installed, so the project's `torch>=2.4` range is already
satisfied and pip never pulls the multi-GB CUDA build.

`test` also keeps `.venv-serve`, the environment `pixart-export serve` runs in for tests/test_serve.py:
Triton's Python-backend stub (from nvidia-pytriton, the `serve` extra) needs numpy < 2, while `.venv` is
on numpy 2. Both are made with the python3 that runs this file; the stub loads that interpreter's
libpython, so it must have one of its own (pyenv with --enable-shared, python.org, the distribution's
python3) or be the same release as the system's libpython3.X. Set-up says so if it cannot serve.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".pixart-export-install"
SERVE_VENV = ROOT / ".venv-serve"
TORCH_CPU = "torch==2.13.0"


def _install_key() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "dev.py"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def ensure_venv(extras: str = "dev") -> None:
    key = f"{_install_key()}:{extras}"
    if STAMP.exists() and STAMP.read_text() == key and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + [TORCH_CPU])
    _run(pip + ["-e", f".[{extras}]"])
    STAMP.write_text(key)


def ensure_serve_venv() -> None:
    """`.venv-serve`: the project with its `serve`, `ort` and `openvino` extras (numpy < 2), no torch."""
    stamp, py = SERVE_VENV / ".pixart-export-install", SERVE_VENV / "bin" / "python"
    key = f"{_install_key()}:serve"
    if stamp.exists() and stamp.read_text() == key and py.exists():
        return
    if not py.exists():
        print(f"creating {SERVE_VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(SERVE_VENV)
    _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[serve,ort,openvino]"])
    check = "from pixart_export.serve.server import check_environment; check_environment()"
    if subprocess.run([str(py), "-c", check], cwd=ROOT).returncode:
        print("note: this machine cannot run `pixart-export serve` (above: why); tests/test_serve.py will skip")
    stamp.write_text(key)


def start_cpp_build() -> subprocess.Popen | None:
    """Build cpp/ in the background, as tests/test_cpp.py builds it first (`_build`: configure once,
    `cmake --build -j2`, under its lock), so that the compile overlaps the serving environment's install
    and the first tests instead of following them; the C++ tests wait on the lock and report a failed
    build themselves. Output: cpp/build/background-build.log. Only for the default suite (no arguments)."""
    import shutil

    if not shutil.which("cmake"):
        return None  # tests/test_cpp.py skips and says so
    log = ROOT / "cpp" / "build" / "background-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; sys.path.insert(0, '.'); from tests.test_cpp import _build; _build()"
    print(f"building cpp/ in the background (log: {log.relative_to(ROOT)})", flush=True)
    with log.open("w") as out:
        return subprocess.Popen([str(PY), "-c", code], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    task, rest = argv[0], argv[1:]
    ensure_venv()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if task == "test":
        cpp = start_cpp_build() if not rest else None
        ensure_serve_venv()
        try:
            return subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
        finally:
            if cpp is not None:
                cpp.wait()
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    cli = [str(VENV / "bin" / "pixart-export")]
    prompt = "a red circle above a blue square"
    engine = ROOT / "engines" / "ort-cpu-tiny"
    steps = [
        # the PyTorch reference (ground truth) ...
        cli
        + [
            "generate",
            "--model",
            "tiny",
            "--prompt",
            prompt,
            "--steps",
            "4",
            "--seed",
            "0",
            "--out",
            str(out / "tiny_reference.png"),
        ],
        # ... the ort-cpu engine: export, verify against the reference, manifest (reused when unchanged) ...
        cli + ["build", "--target", "ort-cpu", "--model", "tiny", "--controlnet", "tiny", "--out", str(engine)],
        # ... and the same image from the engine through the torch-free runtime.
        cli + ["run", str(engine), "--prompt", prompt, "--seed", "0", "--out", str(out / "tiny_ort_cpu.png")],
        # ControlNet: the edge map of the miniature's scene captioned with the prompt as the control image,
        # the same prompt and seed drawn under it, and the three side by side
        [str(PY), "-m", "pixart_export.demo", "control-image", str(out / "controlnet_control.png"), "--prompt", prompt],
        cli
        + [
            "run",
            str(engine),
            "--prompt",
            prompt,
            "--seed",
            "0",
            "--control-image",
            str(out / "controlnet_control.png"),
            "--out",
            str(out / "tiny_ort_cpu_controlnet.png"),
        ],
        [
            str(PY),
            "-m",
            "pixart_export.demo",
            "side-by-side",
            str(out / "controlnet_demo.png"),
            f"control image={out / 'controlnet_control.png'}",
            f"no control={out / 'tiny_ort_cpu.png'}",
            f"controlled={out / 'tiny_ort_cpu_controlnet.png'}",
        ],
    ]
    for step in steps:
        code = subprocess.run(step, cwd=ROOT, env=env).returncode
        if code:
            return code
    print(f"done: images in {out}")
    print(f"ControlNet: {out / 'controlnet_demo.png'} (control image | no control | controlled)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
