"""Engine folders on disk: where a build stages its files, when an existing folder may be reused or
replaced, and the atomic install. Every backend's build goes through here (`build.py`).

- Build key: a hash of the model's identity (configs + weights), the build options, the tool
  versions and the *code* that made the artifacts: the shared export code plus every file of the
  target's backend (`Backend.code`). Editing any of them changes the key, so a stale folder is never
  reused (ARCHITECTURE.md: a cache key must cover all the code that made the artifact).
- Reuse: an existing folder whose manifest has the same key (and passed parity, when the build
  verifies) and whose files all match their sha256 is kept as it is.
- Replace: only a folder this tool can prove it wrote (a manifest it reads, and exactly the files
  that manifest lists) or an empty one; anything else is refused, never deleted.
- Staging: the build writes into `.<name>.building-<pid>-*` beside the destination and renames it
  into place at the end; a failure or Ctrl-C removes it, and leftovers of a killed build (its
  process gone) are removed by the next build of the same folder. Only folders proven ours are: each
  staging folder (and a replaced engine moved aside as `.<name>.old-<pid>-*`) gets a marker file
  (`OWNER`) naming the pid and the destination when it is made; a folder whose name matches but whose
  marker is missing or names another pid or destination is never deleted.
- Destination: never inside another engine folder (a folder installed there would be an unlisted file
  of that engine, which would then refuse to load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import UserError
from .manifest import (
    MANIFEST,
    EngineError,
    Manifest,
    check_files,
    engine_folder_around,
    file_table_names,
    read_manifest,
)

ROOT = Path(__file__).resolve().parent.parent

#: Code every target's artifacts depend on: the graph contracts, the exporter, the reference the
#: graphs are traced from, the calibration and verification that decide what ships.
COMMON_CODE = (
    "pixart_export/graphs.py",
    "pixart_export/export",
    "pixart_export/calibration.py",
    "pixart_export/verify.py",
    "pixart_export/metrics.py",
    "pixart_export/build.py",
    "pixart_export/engine_folder.py",
    "pixart_export/manifest.py",
    "pixart_export/runtime",
    "reference/config.py",
    "reference/dit.py",
    "reference/controlnet.py",
    "reference/sampling.py",
    "reference/schedules.py",
    "reference/text.py",
    "reference/vae.py",
    "reference/loading.py",
    "reference/official.py",
    "reference/pipeline.py",
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def code_files(paths: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """The files behind `paths` (a folder stands for every .py and data file under it), sorted."""
    out = []
    for rel in paths:
        path = root / rel
        if path.is_dir():
            out += [
                p.relative_to(root).as_posix()
                for p in sorted(path.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".txt", ".json")
            ]
        elif path.is_file():
            out.append(rel)
        else:
            raise FileNotFoundError(f"build-key code path {rel} does not exist")  # a packaging bug
    return sorted(set(out))


def code_hash(paths: tuple[str, ...], root: Path = ROOT) -> str:
    """sha256 over (path, sha256 of content) of every file behind `paths`."""
    return _sha(canonical([(rel, _sha((root / rel).read_bytes())) for rel in code_files(paths, root)]))


def build_key(identity: str, options: dict, versions: dict, code: tuple[str, ...]) -> str:
    return _sha(
        canonical(
            {"model": identity, "options": options, "versions": versions, "code": code_hash(COMMON_CODE + tuple(code))}
        )
    )


def engine_name(target: str, model_spec: str, controlnet: str | None) -> str:
    stem = Path(str(model_spec)).stem if str(model_spec) != "tiny" else "tiny"
    return f"{target}-{stem}" + ("-controlnet" if controlnet else "")


# -- what may be replaced ---------------------------------------------------------------------------------
def _written_by_us(out: Path) -> bool:
    """True when `out` holds a manifest we can read (this schema, or an older one whose file list we can
    still read) and exactly the files it lists: the only kind of folder a build may replace."""
    try:
        return _exact(out, read_manifest(out))
    except EngineError:
        pass
    try:  # an older schema: replace it only if its own file list matches the folder exactly
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        listed = set(data["files"]) if isinstance(data, dict) and isinstance(data.get("files"), dict) else None
    except (OSError, ValueError):
        return False
    return listed is not None and set(file_table_names(out)) - {MANIFEST} == listed


def _exact(out: Path, manifest: Manifest) -> bool:
    try:
        check_files(out, manifest, hashes=False)
    except EngineError:
        return False
    return True


def check_destination(out: Path) -> None:
    """Refuse an `--out` that is not ours to replace (a file, or a folder with files we did not write)."""
    out = Path(out)
    around = engine_folder_around(out)
    if around is not None:
        raise UserError(
            f"{out}: inside the engine folder {around}; an engine there would break that folder's file "
            "list: choose an --out outside it"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; refusing to replace it (choose another --out)")
    if not any(out.iterdir()):
        return
    if not _written_by_us(out):
        raise UserError(
            f"{out}: holds files this tool did not write (no engine manifest, or files beside the "
            "ones it lists); refusing to replace it: choose another --out or move those files away"
        )


def reusable(out: Path, key: str, need_parity: bool) -> Manifest | None:
    """The manifest of `out` when it was built with `key` and every file still matches its sha256."""
    if not (Path(out) / MANIFEST).exists():
        return None
    try:
        manifest = read_manifest(out)
        if manifest.build_key != key or (need_parity and not (manifest.parity and manifest.parity.ok)):
            return None
        check_files(out, manifest, hashes=True)
        return manifest
    except EngineError:
        return None


# -- staging and install --------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The marker file a build writes into each folder it makes beside `--out` (staging, scratch, a replaced
#: engine moved aside): {"pid", "out", "kind"}. A dot-file, so it is never part of an engine's file list.
OWNER = ".pixart-export-owner"
LEFTOVER_KINDS = ("building", "scratch", "old")


def _mark(folder: Path, out: Path, kind: str) -> None:
    (folder / OWNER).write_text(json.dumps({"pid": os.getpid(), "out": Path(out).name, "kind": kind}))


def _ours(path: Path, out: Path) -> int | None:
    """The pid of the build that made `path` when its name and its marker prove it is ours, else None."""
    kind, _, rest = path.name[len(Path(out).name) + 2 :].partition("-")
    pid = rest.split("-")[0]
    if kind not in LEFTOVER_KINDS or not pid.isdigit() or path.is_symlink() or not path.is_dir():
        return None
    try:
        marker = json.loads((path / OWNER).read_text(encoding="utf-8")) if (path / OWNER).is_file() else None
    except (OSError, ValueError):
        return None
    expected = {"pid": int(pid), "out": Path(out).name, "kind": kind}
    return int(pid) if marker == expected else None


def clean_leftovers(out: Path) -> list[Path]:
    """Remove the folders that builds of `out` made beside it (staging, scratch, a replaced engine moved
    aside) whose process is gone; only those whose name and marker (`OWNER`) prove they are ours."""
    removed = []
    parent = Path(out).parent
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{Path(out).name}.*"):
        pid = _ours(path, out)
        if pid is not None and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging(out: Path, kind: str = "building"):
    """A private folder beside `out` for a build's files, marked as ours; removed on the way out (install
    moves it first)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))
    try:
        _mark(tmp, out, kind)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(tmp: Path, out: Path) -> None:
    """Rename the finished folder over `out`; a replaced engine is moved aside first, then deleted."""
    tmp, out = Path(tmp), Path(out)
    tmp.chmod(0o755)
    check_destination(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
        out.rename(old)
    try:
        (tmp / OWNER).unlink(missing_ok=True)
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        _mark(old, out, "old")  # should the deletion below be cut short, the next build finishes it
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_graph_files(rec: dict, src_dir: Path, dst_dir: Path) -> None:
    """Copy a record's files (graph + external data) from `src_dir` to `dst_dir`."""
    for name in rec.get("files") or [rec["file"]]:
        shutil.copy2(Path(src_dir) / name, Path(dst_dir) / name)
