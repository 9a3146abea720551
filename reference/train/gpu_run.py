"""One GPU session that trains the miniature end to end within a wall-clock budget, and always writes
its results: teacher arms in parallel -> the arm chosen by a measured criterion -> LCD -> quality.

    python -m reference.train.gpu_run --run runs/gpu --out $OUT [--budget 500]

Phases (each with its own deadline, measured from the start of this script):
1. Teacher arms (`ARMS`), each a `reference.train.teacher` process on the one GPU with its own
   render workers, all stopped by `--time-limit` at the same wall-clock point; the scene classifier
   of the quality benchmark trains meanwhile on the CPU.
2. Selection: every arm's teacher draws the evaluation captions with guided DDIM 25 steps on seeds
   1000.. (disjoint from the benchmark's 0..15); the arm with the highest seen-pair adherence
   (binding; ties: all captions) is kept.
3. LCD (`reference.train.lcd`, Algorithm 1) from the kept teacher, stopped by its time limit.
4. `benchmarks/quality_tiny.py` on the kept teacher and the student (16 seeds, bootstrap intervals).
5. Packing into `--out` (at most 8 files): teacher.tar.gz, student.tar.gz, records.tar.gz (every
   arm's loss.csv, summary.json, loss.png, the selection tables), quality_tiny.{json,md},
   quality_tiny_grid.png, record.json (configs, seeds, processes, wall times, GPU). log.txt comes
   from the caller's tee.
Where the budget runs out, later phases are skipped and what exists is packed.
On a CPU-only machine the same script runs (tests use `--toy`: a few steps at a tiny size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Teacher arms trained side by side: name -> teacher arguments beyond the common ones.
ARMS = {
    "t5x2-b512": ["--batch-size", "512", "--lr", "1e-3"],
    "t5x4-b512": ["--batch-size", "512", "--lr", "1e-3", "--t5-layers", "4", "--t5-ff", "256"],
    "t5x4-b1024": ["--batch-size", "1024", "--lr", "1.5e-3", "--t5-layers", "4", "--t5-ff", "256"],
}
TOY_ARMS = {
    "t5x2-b8": ["--batch-size", "8", "--lr", "1e-3"],
    "t5x4-b8": ["--batch-size", "8", "--lr", "1e-3", "--t5-layers", "4", "--t5-ff", "256"],
}


def now(t0: float) -> str:
    return f"[{time.time() - t0:6.1f} s]"


def gpu_info() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as exc:  # the record must be written whatever breaks
        info["torch_error"] = repr(exc)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


class Runner:
    """Subprocesses with their command lines, exit codes and wall times, for the run record."""

    def __init__(self, t0: float, run: Path):
        self.t0, self.run, self.records = t0, run, []

    def start(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        print(now(self.t0), "start", name, " ".join(cmd), flush=True)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        proc.meta = {"name": name, "cmd": cmd, "log": str(log.relative_to(self.run)), "start_s": time.time() - self.t0}
        return proc

    def wait(self, proc: subprocess.Popen, deadline: float) -> int:
        try:
            rc = proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = rc if rc else -9
        meta = {**proc.meta, "rc": rc, "end_s": time.time() - self.t0}
        self.records.append(meta)
        print(now(self.t0), "end", meta["name"], "rc", rc, flush=True)
        if rc:
            print((self.run / meta["log"]).read_text()[-3000:], flush=True)
        return rc


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def pack(folder: Path, archive: Path, skip: tuple[str, ...] = ()) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not any(part in skip for part in rel.parts):
                tar.add(path, arcname=str(Path(folder.name) / rel))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="work folder (created)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files that come back")
    parser.add_argument("--budget", type=float, default=500, help="seconds for the whole script (default 500)")
    parser.add_argument("--teacher-end", type=float, default=235, help="teacher arms stop at this second (235)")
    parser.add_argument("--lcd-seconds", type=float, default=110, help="LCD training loop seconds (default 110)")
    parser.add_argument(
        "--vae",
        type=Path,
        default=ROOT / "reference" / "assets" / "tiny" / "vae",
        help="the (frozen) VAE (default: the shipped tiny VAE)",
    )
    parser.add_argument("--arms", default=None, help="comma-separated subset of the arms (default all)")
    parser.add_argument("--workers", type=int, default=0, help="render workers per process (default: by CPU count)")
    parser.add_argument("--toy", action="store_true", help="a few steps at a tiny size (a CPU test of this script)")
    args = parser.parse_args(argv)
    t0 = time.time()
    run, out = args.run, args.out
    run.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(t0, run)
    py = sys.executable
    arms = TOY_ARMS if args.toy else ARMS
    if args.arms:
        arms = {k: v for k, v in arms.items() if k in args.arms.split(",")}
    cpus = os.cpu_count() or 2
    workers = args.workers or max(1, (cpus - len(arms) - 1) // len(arms))
    record = {
        "machine": gpu_info(),
        "arms": arms,
        "phases": {},
        "processes": runner.records,
        "toy": args.toy,
        "budget_s": args.budget,
    }
    print(json.dumps(record["machine"]), flush=True)
    if args.toy:
        stream = ["--window", "2", "--chunk", "16", "--refresh", "4", "--render-workers", "1"]
        common_teacher = ["--steps", "100000", "--warmup", "5", "--ckpt-every", "100000"]
        lcd_args = ["--batch-size", "8", "--lr", "1e-4"]
        quality = ["--seeds", "2", "--classifier-steps", "20", "--classifier-images", "200", "--bootstrap", "200"]
        select = ["--seeds", "1"]
    else:
        stream = ["--window", "32", "--chunk", "2048", "--refresh", "24", "--render-workers", str(workers)]
        common_teacher = ["--steps", "1000000", "--warmup", "200", "--ckpt-every", "1000000"]
        lcd_args = ["--batch-size", "256", "--lr", "1e-4"]
        quality = ["--seeds", "16"]
        select = ["--seeds", "4"]
    probe_cache = run / "probe"
    quality += ["--classifier-cache", str(probe_cache)]

    # 1. teacher arms + the probe
    probe = runner.start("probe", [py, "benchmarks/quality_tiny.py", "--classifier-only", *quality], run / "probe.log")
    procs = {}
    for name, extra in arms.items():
        limit = args.teacher_end - (time.time() - t0) - 40  # ~40 s of start-up and writing out
        limit = max(limit, 5)
        procs[name] = runner.start(
            f"teacher {name}",
            [
                py,
                "-m",
                "reference.train.teacher",
                "--vae",
                str(args.vae),
                "--out",
                str(run / name),
                *common_teacher,
                *stream,
                *extra,
                "--time-limit",
                f"{limit:.0f}",
                "--no-progress",
            ],
            run / f"teacher-{name}.log",
        )
    done = [
        name
        for name, proc in procs.items()
        if runner.wait(proc, t0 + args.teacher_end + 60) == 0 and (run / name / "model" / "transformer").is_dir()
    ]
    runner.wait(probe, t0 + args.teacher_end + 90)
    record["phases"]["teacher_end_s"] = time.time() - t0
    for name in arms:
        record.setdefault("teacher_summaries", {})[name] = read_json(run / name / "summary.json")

    # 2. selection
    scores = {}
    if done and time.time() - t0 < args.budget - 150:
        sel = {
            name: runner.start(
                f"select {name}",
                [
                    py,
                    "benchmarks/quality_tiny.py",
                    "--teacher",
                    str(run / name / "model"),
                    "--rows",
                    "t25",
                    "--seed-offset",
                    "1000",
                    *select,
                    *quality[2:],
                    "--no-grid",
                    "--out",
                    str(run / "select"),
                    "--name",
                    f"select-{name}",
                ],
                run / f"select-{name}.log",
            )
            for name in done
        }
        for name, proc in sel.items():
            if runner.wait(proc, time.time() + 150) == 0:
                res = read_json(run / "select" / f"select-{name}.json")["results"][0]
                scores[name] = (res["seen pair"]["mean"], res["all"]["mean"])
    if not scores and done:
        scores = {name: (0.0, 0.0) for name in done[:1]}  # no measurement: the first arm that finished
    best = max(scores, key=lambda n: scores[n]) if scores else None
    record["selection"] = {
        "criterion": "teacher DDIM 25 (CFG 5.5) adherence on the seen pairs (ties: all captions), seeds 1000..",
        "scores": scores,
        "best": best,
    }
    record["phases"]["selection_end_s"] = time.time() - t0
    print(now(t0), "selection", json.dumps(record["selection"]), flush=True)

    # 3. LCD
    teacher_dir = run / best / "model" if best else None
    student_dir = run / "lcd" / "model"
    left = args.budget - (time.time() - t0)
    if teacher_dir and left > 120:
        limit = min(args.lcd_seconds, left - 110)
        lcd_workers = str(max(1, cpus - 2)) if not args.toy else "1"
        stream_lcd = [*stream[:-1], lcd_workers]
        proc = runner.start(
            "lcd",
            [
                py,
                "-m",
                "reference.train.lcd",
                "--teacher",
                str(teacher_dir),
                "--out",
                str(run / "lcd"),
                "--steps",
                "1000000",
                "--ckpt-every",
                "1000000",
                *stream_lcd,
                *lcd_args,
                "--time-limit",
                f"{limit:.0f}",
                "--no-progress",
            ],
            run / "lcd.log",
        )
        runner.wait(proc, time.time() + limit + 60)
    record["lcd_summary"] = read_json(run / "lcd" / "summary.json")
    record["phases"]["lcd_end_s"] = time.time() - t0

    # 4. quality
    if teacher_dir and student_dir.is_dir() and time.time() - t0 < args.budget - 30:
        proc = runner.start(
            "quality",
            [
                py,
                "benchmarks/quality_tiny.py",
                "--teacher",
                str(teacher_dir),
                "--student",
                str(student_dir),
                *quality,
                "--out",
                str(run / "quality"),
            ],
            run / "quality.log",
        )
        runner.wait(proc, t0 + args.budget - 10)
    record["phases"]["quality_end_s"] = time.time() - t0

    # 5. pack
    if teacher_dir:
        pack(teacher_dir, out / "teacher.tar.gz", skip=("vae", "controlnet"))
    if student_dir.is_dir():
        pack(student_dir, out / "student.tar.gz", skip=("vae", "controlnet"))
    records = run / "records"
    records.mkdir(exist_ok=True)
    for name in [*arms, "lcd"]:
        for fname in ("loss.csv", "summary.json", "loss.png", "replicas.json"):
            if (run / name / fname).exists():
                (records / name).mkdir(exist_ok=True)
                shutil.copy(run / name / fname, records / name / fname)
    for log in run.glob("*.log"):
        shutil.copy(log, records / log.name)
    if (run / "select").is_dir():
        shutil.copytree(run / "select", records / "select", dirs_exist_ok=True)
    for fname in ("quality_tiny.json", "quality_tiny.md", "quality_tiny_grid.png"):
        if (run / "quality" / fname).exists():
            shutil.copy(run / "quality" / fname, out / fname)
    record["phases"]["total_s"] = time.time() - t0
    (records / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    pack(records, out / "records.tar.gz")
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(now(t0), "packed", sorted(p.name for p in out.iterdir()), flush=True)


if __name__ == "__main__":
    main()
