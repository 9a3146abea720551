"""`manifest.json` of an engine folder: write it atomically, read it, and check a folder against it.

Torch-free: the runtime validates engine folders with this module before anything runs. The checks
are the security boundary of an engine folder: schema version, backend and its version, that every
file listed has the recorded sha256, that no listed path escapes the folder, and that nothing
unlisted sits beside the graphs (an ONNX file may name external data by relative path).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from .errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class EngineError(UserError):
    """An engine folder that cannot be used as it is; the message names the mismatch and the fix."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    """{relative posix path: {sha256, bytes}} for every file under `folder` except the manifest."""
    folder = Path(folder)
    table = {}
    for rel in sorted(file_table_names(folder)):
        if rel != MANIFEST:
            path = folder / rel
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON next to `path` and rename it over: a reader sees the old file or the new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EngineError(f"{folder}: no such engine folder (build one with `pixart-export build`)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{path}: missing; this is not an engine folder (build one with `pixart-export build`)")
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: not readable JSON ({exc}); rebuild the engine")
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        got = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise EngineError(f"{path}: schema version {got!r}, this pixart-export reads {SCHEMA_VERSION}; "
                          "rebuild the engine with this version")
    for key in ("target", "backend", "files", "graphs"):
        if key not in manifest:
            raise EngineError(f"{path}: no '{key}' entry; rebuild the engine")
    return manifest


def _safe_rel(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and rel == p.as_posix() and "\\" not in rel


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_backend(manifest: dict, backend: str, installed: str) -> None:
    """The backend must be the one built for, at the version the parity was measured with or newer."""
    want = manifest["backend"]
    if want.get("name") != backend:
        raise EngineError(f"engine is for backend {want.get('name')!r} (target {manifest['target']!r}); "
                          f"this loader runs {backend!r}: use the matching runtime or build --target for it")
    built = str(want.get("version", "0"))
    if _version_tuple(installed) < _version_tuple(built):
        raise EngineError(f"engine was built and verified with {backend} {built}, this host has {installed}: "
                          f"upgrade {backend} to >= {built} or rebuild the engine on this host")


def check_files(folder: Path, manifest: dict, hashes: bool = True) -> None:
    """Every listed file present with its recorded size (and sha256); nothing unlisted beside them."""
    folder = Path(folder)
    listed = manifest["files"]
    for rel, info in listed.items():
        if not _safe_rel(rel):
            raise EngineError(f"{folder / MANIFEST}: file entry {rel!r} points outside the engine folder; "
                              "refusing this engine")
        path = folder / rel
        if not path.is_file():
            raise EngineError(f"{path}: listed in the manifest but missing; rebuild the engine or copy it whole")
        if path.stat().st_size != info["bytes"]:
            raise EngineError(f"{path}: size {path.stat().st_size} != {info['bytes']} in the manifest (changed "
                              "or truncated); rebuild the engine or copy it again")
        if hashes and sha256_file(path) != info["sha256"]:
            raise EngineError(f"{path}: sha256 differs from the manifest (file changed after the build); "
                              "rebuild the engine or copy it again")
    extra = sorted(rel for rel in file_table_names(folder) if rel not in listed and rel != MANIFEST)
    if extra:
        raise EngineError(f"{folder}: files not in the manifest: {', '.join(extra[:5])}; remove them or rebuild")


def file_table_names(folder: Path) -> list[str]:
    """Relative paths of the visible files (dot-files are ignored: editors and OSes leave them)."""
    out = []
    for p in Path(folder).rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return out


def verify_engine(folder: Path, backend: str, installed_version: str, hashes: bool = True) -> dict:
    """Read and check an engine folder; the manifest if it may be used, else EngineError."""
    manifest = read_manifest(folder)
    check_backend(manifest, backend, installed_version)
    check_files(folder, manifest, hashes)
    return manifest
