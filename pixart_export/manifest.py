"""`manifest.json` of an engine folder, schema 2: frozen dataclasses, one writer, validated on read.

Torch-free and backend-free: the runtime validates engine folders with this module before anything
runs. It is the security boundary of an engine folder:

- the JSON must match the dataclasses below field by field (types, enums, no missing field); an
  error names the field (`graphs[2].precision: 'int9' is not one of ...`);
- schema 1 folders (pixart-export <= 0.1) are refused with "rebuild with this version";
- every path the manifest names (graph files, engine plans, the tokenizer folder) is a plain
  relative path inside the folder and is listed in `files` with its sha256 and size; nothing
  unlisted sits beside them (an ONNX file may name external data by relative path);
- target and backend must agree with the target registry (`targets.read_engine`, which every
  loader uses), so editing the backend of an ort-cpu folder to openvino does not run unverified
  files through another backend.

`write_manifest` is the only code that writes `manifest.json`: builds, `compile` and `parity` hand
it a `Manifest` (use `dataclasses.replace` to change one) and it writes atomically.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import stat
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import UserError

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
#: `build[SEAL]`: the target and backend the folder was written for (see `write_manifest`).
SEAL = "sealed_for"

#: Bounds of what a reader accepts, the same in cpp/src/manifest.cpp and cpp/src/json.cpp: manifest.json
#: is at most 16 MiB (an XL folder's is under 1 MiB), JSON nests at most 64 levels (ours: under 10),
#: every JSON integer fits 64 bits, and every string is valid UTF-8 (no lone surrogate escapes).
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
INT64 = (-(2**63), 2**63 - 1)
#: Ranges of the integers the runtimes compute with (a bucket side is also at most twice the model's
#: native size, as `generate` and `build` accept).
MAX_SIDE = 16384
RANGES = {
    "latent_channels": (1, 64),
    "vae_scale_factor": (1, 64),
    "tokenizer.max_length": (2, 4096),
    "tokenizer.pad_id": (0, 2**31 - 1),
}
#: The model config fields the runtime reads (`runtime/budget.py`), each an integer in range.
CONFIG_RANGES = {
    "transformer": {
        "patch_size": (1, 64),
        "num_attention_heads": (1, 1024),
        "attention_head_dim": (1, 1024),
        "sample_size": (1, 4096),
    },
}
#: The graphs `runtime.Pipeline` runs for every bucket (`denoiser_lcm{K}` with K = steps).
REQUIRED_GRAPHS = ("text_encoder", "denoiser_lcm{steps}", "vae_decoder")


class EngineError(UserError):
    """An engine folder that cannot be used as it is; the message names the mismatch and the fix."""


class Precision(str, enum.Enum):
    """What a graph file computes in. Details (which layers stayed fp32, the quantiser's settings)
    live in the graph record's `details`; this is what `run --precision` chooses among."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # int8 activations and weights (Q/DQ for TensorRT, NNCF PTQ for OpenVINO)
    INT8_WEIGHTS = "int8-weights"  # int8 weights, float activations (NNCF weight compression)
    FP8 = "fp8"

    def __str__(self) -> str:  # f"{p}" prints "int8", not "Precision.INT8"
        return self.value


#: When a folder has no graph of the asked precision for some graph, the runtime takes the first of
#: these that it has (an int8 engine set runs fp16 where nothing was quantised, and fp32 where an fp16
#: graph failed its gate and shipped fp32; bf16 is the text encoder's plan on bf16 GPUs, t5_plan.py).
FALLBACK = {
    Precision.INT8: (Precision.INT8, Precision.FP16, Precision.BF16, Precision.FP32),
    Precision.FP8: (Precision.FP8, Precision.FP16, Precision.BF16, Precision.FP32),
    Precision.FP16: (Precision.FP16, Precision.BF16, Precision.FP32),
    Precision.BF16: (Precision.BF16, Precision.FP32),
}


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # "B" marks the dynamic batch axis


@dataclass(frozen=True)
class GraphRecord:
    """One runnable file: an exported/prepared graph, or (for TensorRT) a compiled engine plan.

    `runtime`: what the backend must apply to run it as verified (OpenVINO compile properties, the
    TensorRT source graph); `details`: what the build measured and decided, for people to read.
    """

    graph: str
    file: str
    files: tuple[str, ...]
    precision: Precision
    height: int | None
    width: int | None
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    bytes: int = 0
    runtime: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "onnxruntime" | "openvino" | "tensorrt"
    version: str | None  # the version the parity was measured with (TensorRT: the engines', once compiled)
    requires: tuple[str | None, str | None] = (None, None)  # inclusive version range a host must have


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "gpu"
    arch: str  # "any", "x86_64", "sm_75", ...
    sm: int | None = None
    name: str | None = None
    driver: str | None = None
    isa: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ModelRecord:
    spec: str
    controlnet_spec: str | None
    layout: str
    controlnet: bool
    config_hash: str
    weights_hash: str
    identity: str
    configs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LcmRecord:
    spacing: str
    num_train_timesteps: int
    timesteps: tuple[int, ...]
    c_skip: tuple[float, ...]
    c_out: tuple[float, ...]
    alphas_cumprod: tuple[float, ...]


#: The tokenizers the runtime implements (runtime/tokenizer.py).
TOKENIZER_KINDS = ("byt5", "tokenizers")


@dataclass(frozen=True)
class TokenizerRecord:
    kind: str  # "byt5" | "tokenizers"
    dir: str
    max_length: int
    pad_id: int
    tokenizer_class: str


@dataclass(frozen=True)
class Parity:
    """Figures measured at build time (or by `pixart-export parity`) against the reference; rows are
    `verify` rows (graph, output, precision, rel_l2, max_abs, tolerance, why, ok)."""

    ok: bool
    graphs: tuple[dict, ...]
    end_to_end: tuple[dict, ...]
    quality: dict | None = None
    measured_with: dict = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    toolchain: dict
    target: str
    backend: BackendInfo
    device: Device
    model: ModelRecord
    build_key: str
    status: str  # "ready" | "bundle" (TensorRT graphs, not compiled) | "compiled"
    steps: int
    lcm: LcmRecord
    resolutions: tuple[tuple[int, int], ...]
    latent_channels: int
    vae_scale_factor: int
    tokenizer: TokenizerRecord
    graphs: tuple[GraphRecord, ...]
    default_precision: Precision
    parity: Parity | None
    files: dict[str, FileEntry]
    engines: tuple[GraphRecord, ...] = ()
    quantisation: dict | None = None
    build: dict = field(default_factory=dict)  # what the build decided and how long it took

    # -- queries the runtime and the tools share ----------------------------------------------------
    @property
    def runnable(self) -> tuple[GraphRecord, ...]:
        """What a runtime runs: compiled engines where the backend compiles, else the graph files."""
        return self.engines if self.status == "compiled" else self.graphs

    @property
    def precisions(self) -> tuple[Precision, ...]:
        """The precisions a folder carries, in the order of `Precision`."""
        have = {r.precision for r in self.runnable}
        return tuple(p for p in Precision if p in have)

    @property
    def choosable_precisions(self) -> tuple[Precision, ...]:
        """The precisions `run --precision` accepts: those of graphs the folder carries in more than
        one precision (a TensorRT bundle: fp16 and int8), else just the default."""
        seen: dict[tuple, set] = {}
        for r in self.runnable:
            seen.setdefault((r.graph, r.height, r.width), set()).add(r.precision)
        choices = set().union(*(s for s in seen.values() if len(s) > 1)) if seen else set()
        return tuple(p for p in Precision if p in choices) or (self.default_precision,)

    def record(
        self, graph: str, height: int | None, width: int | None, precision: Precision | None = None
    ) -> GraphRecord:
        """The file that runs `graph` for the bucket (`height`, `width`) at `precision` (with its
        fallbacks); EngineError naming the buckets when the folder has none."""
        matches = [
            r
            for r in self.runnable
            if r.graph == graph and (r.height is None or (r.height, r.width) == (height, width))
        ]
        if not matches:
            raise EngineError(
                f"engine has no {graph} graph for {height}x{width}; it was built for "
                f"{', '.join(f'{h}x{w}' for h, w in self.resolutions)}"
            )
        if len(matches) == 1:
            return matches[0]
        want = Precision(precision or self.default_precision)
        for p in FALLBACK.get(want, (want,)):
            for r in matches:
                if r.precision == p:
                    return r
        return matches[0]

    def to_json(self) -> dict:
        return _to_json(self)


#: Keys of a build-time record dict that are GraphRecord fields; every other key is a detail.
_RECORD_FIELDS = {"graph", "file", "files", "precision", "height", "width", "inputs", "outputs", "bytes", "runtime"}


def graph_record(d: dict) -> GraphRecord:
    """A build-time record dict as the manifest's `GraphRecord` (unknown keys go to `details`)."""
    details = {k: v for k, v in d.items() if k not in _RECORD_FIELDS and k != "details"}
    details.update(d.get("details", {}))
    details.pop("lcm", None)  # the manifest's `lcm` section holds it
    return GraphRecord(
        graph=d["graph"],
        file=d["file"],
        files=tuple(d.get("files") or (d["file"],)),
        precision=Precision(d["precision"]),
        height=d["height"],
        width=d["width"],
        inputs=tuple(TensorRecord(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"]),
        outputs=tuple(TensorRecord(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"]),
        bytes=int(d.get("bytes", 0)),
        runtime=dict(d.get("runtime", {})),
        details=details,
    )


# -- JSON <-> dataclasses ----------------------------------------------------------------------------------
def to_json(value):
    """A manifest dataclass (or any value of one) as plain JSON data."""
    return _finite(_to_json(value))


def _to_json(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


class _Invalid(Exception):
    pass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _load(tp, value, where: str):
    """`value` (parsed JSON) as type `tp`, or _Invalid naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _load(option, value, where)
            except _Invalid as exc:
                errors.append(str(exc))
        raise _Invalid(
            errors[0]
            if len(errors) == 1
            else f"{where}: {value!r} is not {' or '.join(_type_name(o) for o in options)}"
        )
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise _Invalid(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Invalid(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_load(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _Invalid(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _load(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise _Invalid(f"{where}: unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            sub = f"{where}.{f.name}" if where else f.name
            if f.name in value:
                kwargs[f.name] = _load(hints[f.name], value[f.name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(f"{sub}: missing")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Invalid(f"{where}: {value!r} is not one of {', '.join(m.value for m in tp)}") from None
    if tp is dict:
        if not isinstance(value, dict):
            raise _Invalid(f"{where}: expected an object, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise _Invalid(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise _Invalid(f"{where}: unsupported type {tp}")  # pragma: no cover - a schema bug, not input


def manifest_from_json(data, source: str = MANIFEST) -> Manifest:
    """Validate parsed JSON as a schema-2 `Manifest`; EngineError naming the field otherwise."""
    if not isinstance(data, dict):
        raise EngineError(f"{source}: not a JSON object; rebuild the engine")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EngineError(
            f"{source}: schema version {version!r}, this pixart-export reads {SCHEMA_VERSION}; "
            "rebuild the engine with this version"
        )
    try:
        manifest = _load(Manifest, data, "")
    except _Invalid as exc:
        raise EngineError(f"{source}: {exc}; rebuild the engine") from None
    _check_consistent(manifest, source)
    return manifest


def _check_consistent(m: Manifest, source: str) -> None:
    """Cross-field rules: every path inside the folder and listed. (Target/backend agreement with the
    registry is `targets.read_engine`'s, which every loader uses.)"""
    for rel in m.files:
        if not safe_rel(rel):
            raise EngineError(f"{source}: file {rel!r} is not a plain relative path inside the folder")
    for kind, records in (("graphs", m.graphs), ("engines", m.engines)):
        for i, rec in enumerate(records):
            for rel in (rec.file, *rec.files):
                if not safe_rel(rel):
                    raise EngineError(
                        f"{source}: {kind}[{i}] names {rel!r}, which is not a plain relative path inside the folder"
                    )
                if rel not in m.files:
                    raise EngineError(
                        f"{source}: {kind}[{i}] names {rel!r}, which is not listed (with its "
                        "sha256) in files; rebuild the engine"
                    )
    if not 1 <= m.steps <= 8:
        raise EngineError(f"{source}: steps {m.steps} is not 1 to 8; rebuild the engine")
    _check_ranges(m, source)
    for h, w in m.resolutions:
        if h <= 0 or w <= 0 or m.vae_scale_factor <= 0 or h % m.vae_scale_factor or w % m.vae_scale_factor:
            raise EngineError(f"{source}: resolutions holds {h}x{w}, not a bucket of this model; rebuild the engine")
    if m.tokenizer.kind not in TOKENIZER_KINDS:
        raise EngineError(
            f"{source}: unknown tokenizer kind {m.tokenizer.kind!r} (this version reads "
            f"{', '.join(TOKENIZER_KINDS)}); rebuild the engine with this version"
        )
    if not safe_rel(m.tokenizer.dir) or not any(f.startswith(m.tokenizer.dir.rstrip("/") + "/") for f in m.files):
        raise EngineError(
            f"{source}: tokenizer folder {m.tokenizer.dir!r} is not inside the folder with its files "
            "listed; rebuild the engine"
        )


def _check_ranges(m: Manifest, source: str) -> None:
    """Integers in the ranges the runtimes compute with, the model configs the runtime reads, at least
    one bucket within the model's limits, and a graph of each needed kind for every bucket."""
    values = {
        "latent_channels": m.latent_channels,
        "vae_scale_factor": m.vae_scale_factor,
        "tokenizer.max_length": m.tokenizer.max_length,
        "tokenizer.pad_id": m.tokenizer.pad_id,
    }
    for name, value in values.items():
        low, high = RANGES[name]
        if not low <= value <= high:
            raise EngineError(f"{source}: {name} {value} is not {low} to {high}; rebuild the engine")
    configs = m.model.configs
    for part, fields in CONFIG_RANGES.items():
        config = configs.get(part, {})
        if not isinstance(config, dict):
            raise EngineError(f"{source}: model.configs.{part}: expected an object; rebuild the engine")
        for name, (low, high) in fields.items():
            value = config.get(name, low)
            if type(value) is not int or not low <= value <= high:
                raise EngineError(
                    f"{source}: model.configs.{part}.{name}: {value!r} is not an integer from {low} to {high}; "
                    "rebuild the engine"
                )
    vae = configs.get("vae", {})
    widths = vae.get("block_out_channels", [1]) if isinstance(vae, dict) else None
    if not isinstance(widths, list) or not widths or any(type(v) is not int or not 1 <= v <= 65536 for v in widths):
        raise EngineError(
            f"{source}: model.configs.vae.block_out_channels: {widths!r} is not a list of integers from 1 to "
            "65536; rebuild the engine"
        )
    if not m.resolutions:
        raise EngineError(f"{source}: resolutions: empty (an engine has at least one bucket); rebuild the engine")
    sample = configs.get("transformer", {}).get("sample_size")
    limit = min(MAX_SIDE, 2 * sample * m.vae_scale_factor) if sample else MAX_SIDE
    for h, w in m.resolutions:
        if h > limit or w > limit:
            raise EngineError(
                f"{source}: resolutions holds {h}x{w}, beyond this model's {limit} px a side; rebuild the engine"
            )
    for kind, records in (("graphs", m.graphs), ("engines", m.engines)):
        for i, rec in enumerate(records):
            for name, value in (("height", rec.height), ("width", rec.width)):
                if value is not None and not 1 <= value <= MAX_SIDE:
                    raise EngineError(f"{source}: {kind}[{i}].{name} {value} is not 1 to {MAX_SIDE}; rebuild it")
    if m.device.sm is not None and not 0 <= m.device.sm <= 1000:
        raise EngineError(f"{source}: device.sm {m.device.sm} is not 0 to 1000; rebuild the engine")
    for rel, entry in m.files.items():
        if entry.bytes < 0:
            raise EngineError(f"{source}: files.{rel}.bytes {entry.bytes} is negative; rebuild the engine")


def check_runnable(m: Manifest, source: str) -> None:
    """A graph of each kind `runtime.Pipeline` runs, for every bucket the folder lists (what runs depends
    on the status: `targets.read_engine` calls this once the status is known good for the target)."""
    for h, w in m.resolutions:
        for name in (g.format(steps=m.steps) for g in REQUIRED_GRAPHS):
            if not any(r.graph == name and r.height in (None, h) and r.width in (None, w) for r in m.runnable):
                raise EngineError(
                    f"{source}: graphs: no {name} graph for the bucket {h}x{w} it lists in resolutions; "
                    "rebuild the engine"
                )


def check_json_values(data, source: str) -> None:
    """What JSON parsers disagree on, refused the same way in both runtimes: nesting deeper than
    MAX_JSON_DEPTH, integers beyond 64 bits, strings that are not valid UTF-8 (lone surrogates)."""
    stack = [(data, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise EngineError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; rebuild the engine")
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, depth + 1, where))
                stack.append((item, depth + 1, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise EngineError(f"{source}: {where}: integer {value} is beyond 64 bits; rebuild the engine")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EngineError(f"{source}: {where}: a string that is not valid UTF-8; rebuild the engine") from None


# -- files ---------------------------------------------------------------------------------------------------
def read_regular(path: Path, limit: int, error=UserError) -> bytes:
    """The bytes of the regular file `path` (symbolic links followed), at most `limit` of them. A FIFO,
    device or socket is refused by its type before it is opened (opening a FIFO would wait for a
    writer; a device may never end), a file over `limit` before it is read. FileNotFoundError passes."""
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file ({_file_kind(st.st_mode)}); give a file")
    if st.st_size > limit:
        raise error(f"{path}: {st.st_size} bytes, more than the {limit} this reads; give a smaller file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise error(f"{path}: replaced while it was read; try again")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path}: more than the {limit} bytes this reads; give a smaller file")
    return data


def engine_folder_around(path: Path) -> Path | None:
    """The engine folder that holds `path` (a parent with a manifest.json of ours), if any: a file written
    there would break its file list, a folder installed there would be an unlisted file of it."""
    for parent in Path(path).resolve().parents:
        try:
            data = json.loads(read_regular(parent / MANIFEST, MAX_MANIFEST_BYTES).decode("utf-8"))
        except (OSError, UserError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and "schema_version" in data and "build_key" in data:
            return parent
    return None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_rel(rel: str) -> bool:
    """A plain relative POSIX path with no `..`, no backslash, not absolute, not empty."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and rel == p.as_posix() and "\\" not in rel


def file_table_names(folder: Path) -> list[str]:
    """Relative paths of the visible files (dot-files are ignored: editors and OSes leave them)."""
    out = []
    for p in Path(folder).rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return out


def file_table(folder: Path) -> dict[str, FileEntry]:
    """{relative posix path: FileEntry} for every file under `folder` except the manifest."""
    folder = Path(folder)
    return {
        rel: FileEntry(sha256_file(folder / rel), (folder / rel).stat().st_size)
        for rel in sorted(file_table_names(folder))
        if rel != MANIFEST
    }


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON next to `path` and rename it over: a reader sees the old file or the new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value):
    if isinstance(value, float):  # pragma: no cover - json handles floats; kept for numpy scalars below
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value):
    """JSON has no inf/NaN: write them as null (a row's `ok` says whether it passed)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """The one writer of manifest.json: validates `manifest` as a reader would, then writes it atomically.

    The parity record is sealed with the target and backend it was measured for, so a folder whose
    target or backend is edited afterwards no longer matches what was verified (`targets.read_engine`);
    `build["sealed_for"]` holds the same pair for every folder, parity or not (an `export` folder has none
    until `parity` runs), so a relabelled target is refused either way."""
    seal = {"target": manifest.target, "backend": manifest.backend.name}
    sealed = manifest.build.get(SEAL)
    if sealed is not None and sealed != seal:
        raise ValueError(f"a folder sealed for {sealed} cannot be written as a {seal} manifest")
    manifest = dataclasses.replace(manifest, build={**manifest.build, SEAL: seal})
    if manifest.parity is not None:
        measured = manifest.parity.measured_with
        if any(measured.get(k, v) != v for k, v in seal.items()):
            raise ValueError(f"parity measured for {measured} cannot be written into a {seal} manifest")
        parity = dataclasses.replace(manifest.parity, measured_with={**measured, **seal})
        manifest = dataclasses.replace(manifest, parity=parity)
    data = _finite(manifest.to_json())
    manifest_from_json(json.loads(json.dumps(data)), str(Path(folder) / MANIFEST))
    write_json_atomic(Path(folder) / MANIFEST, data)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise EngineError(f"{folder}: no such engine folder (build one with `pixart-export build`)")
    try:
        data = json.loads(read_regular(path, MAX_MANIFEST_BYTES, EngineError).decode("utf-8"))
    except FileNotFoundError:
        raise EngineError(
            f"{path}: missing; this is not an engine folder (build one with `pixart-export build`)"
        ) from None
    except RecursionError:
        raise EngineError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; rebuild the engine") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: not readable JSON ({exc}); rebuild the engine") from None
    check_json_values(data, str(path))
    return manifest_from_json(data, str(path))


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


class HeldFiles:
    """The listed files of a checked folder, opened at check time and held open: a runner reads a graph
    through `read(rel)`, from the very file that was checked, so a folder renamed or replaced after the
    check cannot feed it other files; with `hashes`, the bytes are hashed again as they are read, so a
    file rewritten in place after the check is refused too. What runs is what was hashed."""

    def __init__(self, folder: Path, manifest: Manifest, hashes: bool):
        self.folder, self.manifest, self.hashes = Path(folder), manifest, hashes
        self._fds: dict[str, int] = {}
        self._stats: dict[str, tuple] = {}  # (size, mtime_ns, ctime_ns) of each file before it was hashed

    def hold(self, rel: str, fd: int, st: os.stat_result) -> None:
        """Hold `fd` open for `rel`; `st` is its fstat from before the check read it."""
        self._fds[rel] = fd
        self._stats[rel] = _identity(st)

    def read(self, rel: str) -> bytes:
        """The file's bytes (for small files: graphs and engines a runtime wants as `bytes`)."""
        return bytes(self.read_buffer(rel))

    def read_buffer(self, rel: str) -> bytearray:
        """The file's bytes in one buffer filled in place: a 4.4 GB weights file read in 2 GiB pieces and
        joined would hold up to twice its size at once (the full-size T5's int8 weights)."""
        fd, entry = self._fds[rel], self.manifest.files[rel]
        buf = bytearray(entry.bytes)
        view, got = memoryview(buf), 0
        while got < entry.bytes:
            n = os.preadv(fd, [view[got:]], got)
            if not n:
                break
            got += n
        grown = bool(os.pread(fd, 1, entry.bytes))
        if got != entry.bytes or grown or (self.hashes and hashlib.sha256(buf).hexdigest() != entry.sha256):
            raise EngineError(
                f"{self.folder / rel}: changed after the folder was checked; rebuild the engine or copy it again"
            )
        return buf

    def map(self, rel: str):
        """The file mapped (`mapped.MappedFile`), for a weights file too large to hold twice: its pages are
        borrowed from the file rather than read and hashed again, so `check_unchanged(rel)` is what
        keeps what runs equal to what was hashed; call it after each compile and before each run."""
        from .mapped import MappedFile

        self.check_unchanged(rel)
        return MappedFile(self._fds[rel], self.manifest.files[rel].bytes)

    def check_unchanged(self, rel: str) -> None:
        """The file's size, mtime and ctime as they were before the check hashed it: any write since
        moves the ctime (only root can set it back), so unchanged means the bytes are the hashed ones."""
        if _identity(os.fstat(self._fds[rel])) != self._stats[rel]:
            raise EngineError(
                f"{self.folder / rel}: changed after the folder was checked; rebuild the engine or copy it again"
            )

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        self.close()


def _identity(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _open_listed(folder: Path, rel: str, entry: FileEntry, hashes: bool) -> tuple[int, os.stat_result]:
    """An open descriptor of a listed file that is a regular file of its own (no symbolic link on the way,
    no second hard link: a link to a file outside the folder would let that file change what runs), with
    its recorded size and sha256; and its fstat from before the hash was read."""
    path = folder / rel
    parts = PurePosixPath(rel).parts
    if any(folder.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts))):
        raise EngineError(f"{path}: a symbolic link; an engine folder holds its own files (copy them in, or rebuild)")
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or stat.S_ISDIR(st.st_mode):
        raise EngineError(f"{path}: missing (listed in the manifest); rebuild the engine or copy it again")
    if not stat.S_ISREG(st.st_mode):
        raise EngineError(f"{path}: not a regular file ({_file_kind(st.st_mode)}); rebuild the engine or copy it again")
    if st.st_nlink != 1:
        raise EngineError(
            f"{path}: has {st.st_nlink} hard links; an engine folder holds its own files (copy it in, "
            "e.g. cp without -l, or rebuild)"
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or now.st_nlink != 1:
            raise EngineError(f"{path}: replaced while it was checked; try again")
        if now.st_size != entry.bytes:
            raise EngineError(
                f"{path}: size {now.st_size} != {entry.bytes} in the manifest (changed "
                "or truncated); rebuild the engine or copy it again"
            )
        if hashes:
            digest = hashlib.sha256()
            offset = 0
            while block := os.pread(fd, 1 << 22, offset):
                digest.update(block)
                offset += len(block)
            if digest.hexdigest() != entry.sha256:
                raise EngineError(
                    f"{path}: sha256 differs from the manifest (file changed after the build); "
                    "rebuild the engine or copy it again"
                )
    except BaseException:
        os.close(fd)
        raise
    return fd, now


def check_files(folder: Path, manifest: Manifest, hashes: bool = True) -> HeldFiles:
    """Every listed file present with its recorded size (and sha256); nothing unlisted beside them.
    Returns the files held open (`HeldFiles`), for the runner to load exactly what was checked."""
    folder = Path(folder)
    held = HeldFiles(folder, manifest, hashes)
    try:
        for rel, entry in manifest.files.items():
            held.hold(rel, *_open_listed(folder, rel, entry, hashes))
        extra = sorted(rel for rel in file_table_names(folder) if rel not in manifest.files and rel != MANIFEST)
        if extra:
            raise EngineError(f"{folder}: files not in the manifest: {', '.join(extra[:5])}; remove them or rebuild")
    except BaseException:
        held.close()
        raise
    return held


def unloadable(file: str, backend: str, exc: BaseException) -> EngineError:
    """The error for a listed graph file its backend cannot load (its hash matched: it was corrupt or
    truncated when the manifest was made, or the manifest was rewritten to match)."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return EngineError(f"{file}: not loadable by {backend} ({detail}); rebuild the engine or copy it again")


def check_backend_version(manifest: Manifest, installed: str) -> None:
    """The backend must be at the version the parity was measured with or newer (and within `requires`)."""
    name, built = manifest.backend.name, manifest.backend.version
    if built is not None and version_tuple(installed) < version_tuple(built):
        raise EngineError(
            f"engine was built and verified with {name} {built}, this host has {installed}: "
            f"upgrade {name} to >= {built} or rebuild the engine on this host"
        )
    lo, hi = manifest.backend.requires
    have = version_tuple(installed)
    if (lo and have < version_tuple(lo)) or (hi and have[:2] > version_tuple(hi)[:2]):
        raise EngineError(f"{manifest.target} needs {name} {lo or ''}..{hi or ''}; this host has {installed}")
