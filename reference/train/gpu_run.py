"""One GPU session that trains the miniature end to end within a wall-clock budget, and always writes
its results: teacher arm(s) -> the arm chosen by a measured criterion -> LCD -> quality.

    python -m reference.train.gpu_run --run /tmp/run --out $OUT [--budget 515] [--arms aux-b1024]

Phases (each with its own deadline, measured from the start of this script):
1. Teacher arms (`ARMS`; default `DEFAULT_ARMS`, one arm with the whole GPU: the trained T5 with the
   auxiliary role loss, `teacher --aux-role`), each a `reference.train.teacher` process with its own
   render workers, stopped at the wall-clock point `--teacher-end` - 15 s (`--stop-at`, whatever its
   start-up took); the scene classifier of the quality benchmark trains meanwhile on the CPU.
2. Selection (two or more arms): every arm's teacher draws the evaluation captions with guided DDIM 25
   steps on seeds 1000.. (disjoint from the benchmark's 0..15); the arm with the highest seen-pair
   adherence (binding; ties: all captions) is kept. One arm is kept as it is.
3. LCD (`reference.train.lcd`, Algorithm 1) from the kept teacher, stopped by its time limit; the text
   probe (`text_probe`) of the kept teacher's T5 runs meanwhile on the CPU.
4. `benchmarks/quality_tiny.py` on the kept teacher and the student (16 seeds, bootstrap intervals).
5. Packing into `--out` (at most 8 files): teacher.tar.gz, student.tar.gz, records.tar.gz (every
   arm's loss.csv, summary.json, loss.png, the selection tables, every process's log), quality_tiny.{json,md},
   quality_tiny_grid.png, record.json (configs, seeds, processes, wall times, GPU, text probe, errors).
   log.txt comes from the caller's tee.
A phase that raises is recorded in record.json's "errors" and the next phases still run; where the
budget runs out, later phases are skipped; packing always runs. A process still alive 15 s after
writing its summary.json (a lingering render worker) is killed and counted as finished.
On a CPU-only machine the same script runs (`--toy`: a few steps at a tiny size, the dry run).
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

#: Teacher arms trained side by side: name -> teacher arguments beyond the common ones. The default is
#: one arm (the whole GPU to it): the trained 2-layer T5 with the auxiliary role loss (`--aux-role`),
#: which the CPU binding proxy found necessary for binding (benchmarks/results/quality_tiny_binding_probe.md).
ARMS = {
    "aux-b1024": ["--batch-size", "1024", "--lr", "1e-3", "--aux-role", "1"],
    "base-b1024": ["--batch-size", "1024", "--lr", "1e-3"],
    "t5x2-b512": ["--batch-size", "512", "--lr", "1e-3"],
    "t5x4-b512": ["--batch-size", "512", "--lr", "1e-3", "--t5-layers", "4", "--t5-ff", "256"],
}
DEFAULT_ARMS = ("aux-b1024",)
TOY_ARMS = {
    "aux-b8": ["--batch-size", "8", "--lr", "1e-3", "--aux-role", "1"],
    "t5x2-b8": ["--batch-size", "8", "--lr", "1e-3"],
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

    def wait(self, proc: subprocess.Popen, deadline: float, done_file: Path | None = None, grace: float = 15) -> int:
        """Wait for `proc` until `deadline`, then kill it. With `done_file` (what the process writes last),
        a process still alive `grace` s after writing it is killed too (its results are complete; a
        lingering render worker must not eat the budget) and counts as a success (rc 0)."""
        written = None
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if done_file is not None and written is None and done_file.exists():
                written = time.time()
            if time.time() > deadline or (written is not None and time.time() > written + grace):
                proc.kill()
                proc.wait()
                rc = 0 if written is not None else -9
                break
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
    parser.add_argument("--budget", type=float, default=515, help="seconds for the whole script (default 515)")
    parser.add_argument("--teacher-end", type=float, default=305, help="teacher arms stop at this second (305)")
    parser.add_argument("--lcd-seconds", type=float, default=110, help="LCD training loop seconds (default 110)")
    parser.add_argument("--lcd-batch", type=int, default=256, help="LCD global batch (default 256)")
    parser.add_argument("--lcd-lr", type=float, default=1e-4, help="LCD learning rate (default 1e-4)")
    parser.add_argument(
        "--vae",
        type=Path,
        default=ROOT / "reference" / "assets" / "tiny" / "vae",
        help="the (frozen) VAE (default: the shipped tiny VAE)",
    )
    parser.add_argument(
        "--arms",
        default=None,
        help=f"comma-separated arms of {sorted(ARMS)} (default {','.join(DEFAULT_ARMS)}; --toy: all toy arms)",
    )
    parser.add_argument("--workers", type=int, default=0, help="render workers per process (default: by CPU count)")
    parser.add_argument("--toy", action="store_true", help="a few steps at a tiny size (a CPU test of this script)")
    args = parser.parse_args(argv)
    t0 = time.time()
    run, out = args.run, args.out
    run.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(t0, run)
    table = TOY_ARMS if args.toy else ARMS
    names = args.arms.split(",") if args.arms else (list(TOY_ARMS) if args.toy else list(DEFAULT_ARMS))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; known: {sorted(table)}")
    arms = {k: table[k] for k in names}
    record = {
        "machine": gpu_info(),
        "arms": arms,
        "args": {k: str(v) for k, v in vars(args).items()},
        "phases": {},
        "processes": runner.records,
        "toy": args.toy,
        "budget_s": args.budget,
        "errors": [],
    }
    print(json.dumps(record["machine"]), flush=True)
    state = {"teacher_dir": None, "student_dir": run / "lcd" / "model"}
    for phase in (phase_teachers, phase_lcd, phase_quality):
        try:  # a failing phase is recorded; what exists is still packed
            phase(args, arms, runner, record, state)
        except Exception as exc:
            record["errors"].append(f"{phase.__name__}: {exc!r}")
            print(now(t0), "error in", phase.__name__, repr(exc), flush=True)
    try:
        pack_results(args, arms, record, state, t0)
    except Exception as exc:  # at least the record comes back
        record["errors"].append(f"pack_results: {exc!r}")
        print(now(t0), "error in pack_results", repr(exc), flush=True)
        (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")


def settings(args, n_arms: int) -> dict[str, list[str]]:
    cpus = os.cpu_count() or 2
    workers = args.workers or max(1, (cpus - n_arms - 1) // n_arms)
    if args.toy:
        return {
            "stream": ["--window", "2", "--chunk", "16", "--refresh", "4", "--render-workers", "1"],
            "teacher": ["--steps", "100000", "--warmup", "5", "--ckpt-every", "100000"],
            "lcd": ["--batch-size", "8", "--lr", "1e-4", "--render-workers", "1"],
            "quality": ["--seeds", "2", "--classifier-steps", "20", "--classifier-images", "200", "--bootstrap", "200"],
            "select": ["--seeds", "1"],
        }
    return {
        "stream": ["--window", "32", "--chunk", "2048", "--refresh", "24", "--render-workers", str(workers)],
        "teacher": ["--steps", "1000000", "--warmup", "200", "--ckpt-every", "1000000"],
        "lcd": [
            "--batch-size",
            str(args.lcd_batch),
            "--lr",
            f"{args.lcd_lr:g}",
            "--render-workers",
            str(max(1, cpus - 3)),
        ],
        "quality": ["--seeds", "16"],
        "select": ["--seeds", "4"],
    }


def phase_teachers(args, arms, runner, record, state) -> None:
    """1. the teacher arms (and the benchmark's classifier on the CPU meanwhile); 2. selection."""
    t0, run, py = runner.t0, args.run, sys.executable
    cfg = settings(args, len(arms))
    quality = [*cfg["quality"], "--classifier-cache", str(run / "probe")]
    probe = runner.start("probe", [py, "benchmarks/quality_tiny.py", "--classifier-only", *quality], run / "probe.log")
    procs = {}
    for name, extra in arms.items():
        stop = t0 + args.teacher_end - 15  # a wall-clock stop: ~15 s left to write the model out
        cmd = [py, "-m", "reference.train.teacher", "--vae", str(args.vae), "--out", str(run / name)]
        cmd += [*cfg["teacher"], *cfg["stream"], *extra, "--stop-at", f"{stop:.1f}", "--no-progress"]
        procs[name] = runner.start(f"teacher {name}", cmd, run / f"teacher-{name}.log")
    done = [
        name
        for name, proc in procs.items()
        if runner.wait(proc, t0 + args.teacher_end + 60, run / name / "summary.json") == 0
        and (run / name / "model" / "transformer").is_dir()
    ]
    runner.wait(probe, t0 + args.teacher_end + 90)
    record["phases"]["teacher_end_s"] = time.time() - t0
    for name in arms:
        record.setdefault("teacher_summaries", {})[name] = read_json(run / name / "summary.json")
    scores = {}
    if len(done) > 1 and time.time() - t0 < args.budget - 150:  # one arm: nothing to select
        sel = {}
        for name in done:
            cmd = [py, "benchmarks/quality_tiny.py", "--teacher", str(run / name / "model"), "--rows", "t25"]
            cmd += ["--seed-offset", "1000", *cfg["select"], *quality[2:], "--no-grid"]
            cmd += ["--out", str(run / "select"), "--name", f"select-{name}"]
            sel[name] = runner.start(f"select {name}", cmd, run / f"select-{name}.log")
        for name, proc in sel.items():
            if runner.wait(proc, time.time() + 150) == 0:
                res = read_json(run / "select" / f"select-{name}.json")["results"][0]
                scores[name] = (res["seen pair"]["mean"], res["all"]["mean"])
    if not scores and done:
        scores = {name: (0.0, 0.0) for name in done[:1]}  # no measurement: the first arm that finished
    best = max(scores, key=lambda n: scores[n]) if scores else None
    record["selection"] = {
        "criterion": "teacher DDIM 25 (CFG 5.5) adherence on the seen pairs (ties: all captions), seeds 1000..; "
        "a single arm is kept unmeasured",
        "scores": scores,
        "best": best,
    }
    record["phases"]["selection_end_s"] = time.time() - t0
    print(now(t0), "selection", json.dumps(record["selection"]), flush=True)
    state["teacher_dir"] = run / best / "model" if best else None


def phase_lcd(args, arms, runner, record, state) -> None:
    """3. LCD from the kept teacher (and the text probe of its T5 on the CPU meanwhile)."""
    t0, run, py = runner.t0, args.run, sys.executable
    teacher_dir = state["teacher_dir"]
    left = args.budget - (time.time() - t0)
    if not teacher_dir or left <= 120:
        return
    cfg = settings(args, len(arms))
    text_probe = runner.start(
        "text probe", [py, "-m", "reference.train.text_probe", str(teacher_dir)], run / "text_probe.log"
    )
    limit = min(args.lcd_seconds, left - 110)
    slack = 4.0 if args.toy else 1.0  # the toy runs on a (possibly loaded) CPU: slow start-up and steps
    stop = time.time() + limit + 25 * slack  # the loop's own limit, or this wall-clock point if start-up is slow
    stream = cfg["stream"][:-2]  # the LCD process gets its own render workers
    cmd = [py, "-m", "reference.train.lcd", "--teacher", str(teacher_dir), "--out", str(run / "lcd")]
    cmd += ["--steps", "1000000", "--ckpt-every", "1000000", *stream, *cfg["lcd"]]
    cmd += ["--time-limit", f"{limit:.0f}", "--stop-at", f"{stop:.1f}", "--no-progress"]
    runner.wait(runner.start("lcd", cmd, run / "lcd.log"), stop + 45 * slack, run / "lcd" / "summary.json")
    record["lcd_summary"] = read_json(run / "lcd" / "summary.json")
    record["phases"]["lcd_end_s"] = time.time() - t0
    runner.wait(text_probe, time.time() + 5)
    record["text_probe"] = read_probe(run / "text_probe.log")


def read_probe(log: Path) -> dict | None:
    """The JSON document `text_probe` prints (after any warnings), or None."""
    try:
        text = log.read_text()
        return json.loads(text[text.index("{") :])
    except (OSError, ValueError):
        return None


def phase_quality(args, arms, runner, record, state) -> None:
    """4. the quality benchmark on the kept teacher and the student."""
    t0, run, py = runner.t0, args.run, sys.executable
    teacher_dir, student_dir = state["teacher_dir"], state["student_dir"]
    if not (teacher_dir and time.time() - t0 < args.budget - 30):
        return
    cfg = settings(args, len(arms))
    quality = [*cfg["quality"], "--classifier-cache", str(run / "probe")]
    cmd = [py, "benchmarks/quality_tiny.py", "--teacher", str(teacher_dir)]
    if student_dir.is_dir():
        cmd += ["--student", str(student_dir)]
    else:  # the teacher's rows alone (the VAE row reads the student's VAE)
        cmd += ["--rows", "real,t25,t4"]
    cmd += [*quality, "--out", str(run / "quality")]
    runner.wait(runner.start("quality", cmd, run / "quality.log"), t0 + args.budget - 10)
    record["phases"]["quality_end_s"] = time.time() - t0


def pack_results(args, arms, record, state, t0: float) -> None:
    """5. teacher.tar.gz, student.tar.gz, records.tar.gz, quality_tiny.*, record.json into --out."""
    run, out = args.run, args.out
    teacher_dir, student_dir = state["teacher_dir"], state["student_dir"]
    if teacher_dir and teacher_dir.is_dir():
        pack(teacher_dir, out / "teacher.tar.gz", skip=("vae", "controlnet"))
    if student_dir.is_dir():
        pack(student_dir, out / "student.tar.gz", skip=("vae", "controlnet"))
    records = run / "records"
    records.mkdir(parents=True, exist_ok=True)
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
    print(f"[{record['phases']['total_s']:6.1f} s]", "packed", sorted(p.name for p in out.iterdir()), flush=True)


if __name__ == "__main__":
    main()
