"""`build`: model -> engine folder for a target, as one pipeline of named stages for every backend.

    load model -> (build key: reuse an identical folder) -> export fp32 ONNX + tokenizer
      -> the backend's stages (quantise / convert / compile: `Backend.stages`)
      -> verify against the reference (`Backend.verify`, through `verify.py`)
      -> write manifest.json (the one writer) and install atomically -> `Backend.finish`

The pipeline numbers its stages itself ("[3/7] ...") and knows no backend by name: what differs
between targets lives in `backends/<name>/`. Folder handling (staging beside the destination, the
build key, reuse, the atomic install, clean-up of interrupted builds) is `engine_folder.py`'s.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import engine_folder
from .backends.base import Stage
from .errors import GateFailed, UserError
from .manifest import (
    SCHEMA_VERSION,
    GraphRecord,
    LcmRecord,
    Manifest,
    ModelRecord,
    Parity,
    Precision,
    TokenizerRecord,
    file_table,
    graph_record,
    read_manifest,
    write_manifest,
)
from .progress import log as default_log
from .resources import StageMeter, format_stage, release_freed_memory
from .targets import Target, get_target

Log = Callable[[str], None]


@dataclass
class BuildRequest:
    """What the user asked for. `options`: the backend's build options (`Backend.options`); `onnx_from`:
    an ort-cpu folder of the same model whose fp32 graphs stand in for the export (XL exports take long)."""

    target: Target
    model_spec: str
    out: Path | None = None
    controlnet_spec: str | None = None
    resolutions: list[tuple[int, int]] | None = None
    steps: int = 4
    lcm_spacing: str | None = None
    verify: bool = True
    force: bool = False
    options: dict | None = None
    onnx_from: Path | None = None
    preview_decoder: str | Path | None = None  # a diffusers AutoencoderTiny folder, or "tiny" (`preview.py`)


@dataclass
class BuildContext:
    """What the stages share. Records are plain dicts while the build runs (backends add to them);
    `assemble` turns them into the typed `Manifest`."""

    request: BuildRequest
    out: Path
    log: Log
    model: object = None
    resolutions: list[tuple[int, int]] = field(default_factory=list)
    identity: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    key: str = ""
    staging: Path | None = None  # the folder that becomes the engine folder
    scratch: Path | None = None  # intermediates, never shipped
    fp32_dir: Path | None = None  # the exported fp32 ONNX graphs
    fp32_records: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # what ships, files in `staging`
    tokenizer: dict = field(default_factory=dict)
    status: str = "ready"
    default_precision: Precision = Precision.FP32
    quantisation: dict | None = None
    build_info: dict = field(default_factory=dict)
    parity: Parity | None = None
    started: float = field(default_factory=time.perf_counter)
    stages: list[dict] = field(default_factory=list)  # {name, seconds, peak_rss_bytes, ...} of each ended stage
    stage_meter: StageMeter | None = None  # the stage running now

    def stage_records(self) -> list[dict]:
        """The ended stages' records, and the running stage's so far (the install stage writes the manifest)."""
        running = [{**self.stage_meter.record(), "in_progress": True}] if self.stage_meter is not None else []
        return [*self.stages, *running]

    @property
    def target(self) -> Target:
        return self.request.target

    def assemble(self, records: list[dict] | None = None, folder: Path | None = None) -> Manifest:
        """The manifest of the folder as built so far (`records` and `folder` default to what ships)."""
        from reference.schedules import NUM_TRAIN_TIMESTEPS

        lcm = next(r["lcm"] for r in self.fp32_records if "lcm" in r)
        req, ident = self.request, self.identity
        return Manifest(
            schema_version=SCHEMA_VERSION,
            toolchain=dict(self.versions),
            target=self.target.name,
            backend=self.target.backend.backend_info(self.target, self.versions),
            device=self.target.backend.device(self.target),
            model=ModelRecord(
                spec=str(req.model_spec),
                controlnet_spec=None if req.controlnet_spec is None else str(req.controlnet_spec),
                layout=self.model.layout,
                controlnet=self.model.controlnet is not None,
                config_hash=ident["config_hash"],
                weights_hash=ident["weights_hash"],
                identity=ident["identity"],
                configs=ident["configs"],
            ),
            build_key=self.key,
            status=self.status,
            steps=req.steps,
            lcm=LcmRecord(
                spacing=self.model.lcm_spacing,
                num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                timesteps=tuple(lcm["timesteps"]),
                c_skip=tuple(lcm["c_skip"]),
                c_out=tuple(lcm["c_out"]),
                alphas_cumprod=tuple(lcm["alphas_cumprod"]),
            ),
            resolutions=tuple(tuple(r) for r in self.resolutions),
            latent_channels=self.model.dit.config.in_channels,
            vae_scale_factor=self.model.vae_scale_factor,
            tokenizer=TokenizerRecord(
                kind=self.tokenizer["kind"],
                dir=self.tokenizer["dir"],
                max_length=self.tokenizer["max_length"],
                pad_id=self.tokenizer["pad_id"],
                tokenizer_class=self.tokenizer["class"],
            ),
            graphs=tuple(graph_record(r) for r in (self.records if records is None else records)),
            default_precision=self.default_precision,
            parity=self.parity,
            files=file_table(self.staging if folder is None else folder),
            quantisation=self.quantisation,
            build={**self.build_info, "stages": self.stage_records()},
        )


# -- the common stages -------------------------------------------------------------------------------------------
def _load(ctx: BuildContext) -> None:
    from reference.loading import load_model, resolve_controlnet

    from .export import exporter
    from .export.identity import model_identity, toolchain_versions

    req = ctx.request
    ctx.model = load_model(req.model_spec, controlnet=req.controlnet_spec, lcm_spacing=req.lcm_spacing)
    ctx.resolutions = req.resolutions or [(ctx.model.default_resolution, ctx.model.default_resolution)]
    exporter.check_exportable(ctx.model, ctx.resolutions, req.steps)
    exporter.check_text_encoder(ctx.model, ctx.target)
    backend = ctx.target.backend
    backend.check_request(ctx)
    ctx.identity = model_identity(ctx.model, resolve_controlnet(req.controlnet_spec) if req.controlnet_spec else None)
    ctx.versions = {**toolchain_versions(), **backend.versions()}
    key_options = {
        "target": ctx.target.name,
        "resolutions": [list(r) for r in ctx.resolutions],
        "steps": req.steps,
        "lcm_spacing": ctx.model.lcm_spacing,
        "verify": req.verify,
        "backend": ctx.options,
    }
    if req.onnx_from is not None:
        key_options["onnx_from"] = _onnx_source(ctx).build_key
    if req.preview_decoder is not None:
        key_options["preview_decoder"] = _load_preview(ctx)
    ctx.key = engine_folder.build_key(ctx.identity["identity"], key_options, ctx.versions, backend.code)


def _load_preview(ctx: BuildContext) -> str:
    """Attach the `--preview-decoder` folder's AutoencoderTiny to the model; its digest (for the build key).
    The check that it reads this VAE's latents runs in the export stage (`_check_preview`), after reuse."""
    from . import preview

    folder = preview.resolve(ctx.request.preview_decoder)
    ctx.model.vae_preview = preview.load(folder)
    digest = preview.digest(folder)
    ctx.build_info["preview_decoder"] = {
        "source": str(ctx.request.preview_decoder),
        "folder": str(folder),
        "class": "diffusers.AutoencoderTiny",
        "digest": digest,
    }
    return digest


def _check_preview(ctx: BuildContext) -> None:
    from . import preview
    from .calibration import CALIBRATION_PROMPTS, read_prompts

    figures = preview.check(
        ctx.model, ctx.model.vae_preview, ctx.resolutions[0], ctx.request.steps, read_prompts(CALIBRATION_PROMPTS)
    )
    ctx.build_info["preview_decoder"]["check"] = figures
    ctx.log(
        f"      preview decoder vs the full decoder on {figures['images']} calibration latents: mean PSNR "
        f"{figures['mean_psnr_db']:.2f} dB (>= {figures['min_mean_psnr_db']:g}), SSIM {figures['mean_ssim']:.4f}"
    )


def _onnx_source(ctx: BuildContext) -> Manifest:
    """The manifest of the ort-cpu folder given as `onnx_from`, refused unless it holds this model's graphs."""
    from .manifest import check_files, read_manifest

    folder = Path(ctx.request.onnx_from)
    manifest = read_manifest(folder)
    check_files(folder, manifest, hashes=True)
    if any(r.precision != Precision.FP32 or not r.file.endswith(".onnx") for r in manifest.graphs):
        raise UserError(
            f"{folder}: --onnx-from needs a folder of fp32 ONNX graphs (from `export`); it is a "
            f"{manifest.target} folder"
        )
    if manifest.model.identity != ctx.identity["identity"]:
        raise UserError(
            f"{folder}: built from another model (identity {manifest.model.identity[:12]} != "
            f"{ctx.identity['identity'][:12]}); export again without --onnx-from"
        )
    buckets = [list(r) for r in manifest.resolutions]
    if manifest.steps != ctx.request.steps or buckets != [list(r) for r in ctx.resolutions]:
        raise UserError(
            f"{folder}: steps {manifest.steps} / resolutions {[list(r) for r in manifest.resolutions]} "
            f"differ from this build's {ctx.request.steps} / {[list(r) for r in ctx.resolutions]}"
        )
    if any(r.details.get("optimisation") for r in manifest.graphs):
        raise UserError(
            f"{folder}: its graphs were optimised by onnxruntime; give an `export` folder or a build with --no-optimise"
        )
    return manifest


def _export(ctx: BuildContext) -> None:
    from reference.text import MAX_TEXT_LEN

    from .export import exporter
    from .export.tokenizer import export_tokenizer
    from .preview import GRAPH as PREVIEW
    from .progress import step_bar

    if ctx.model.vae_preview is not None:
        _check_preview(ctx)
    ctx.fp32_dir = ctx.scratch / "onnx"
    if ctx.request.onnx_from is not None:
        source = _onnx_source(ctx)
        ctx.fp32_dir = Path(ctx.request.onnx_from)
        # the preview decoder's graph only where this build asks for it
        ctx.fp32_records = [
            fp32_dict(r, source) for r in source.graphs if r.graph != PREVIEW or ctx.model.vae_preview is not None
        ]
        if ctx.model.vae_preview is not None and not any(r["graph"] == PREVIEW for r in ctx.fp32_records):
            raise UserError(
                f"{ctx.fp32_dir} has no {PREVIEW} graph: export it with --preview-decoder, or build without --onnx-from"
            )
        ctx.log(f"      fp32 graphs of {ctx.fp32_dir} (exported and hashed by its build)")
    else:
        with step_bar(_graph_count(ctx), "export", "graph") as bar:

            def on_graph(name):
                ctx.log(f"      {name}")
                bar.update(1)

            ctx.fp32_records = exporter.export_model(
                ctx.model, ctx.fp32_dir, ctx.resolutions, ctx.request.steps, on_graph=on_graph
            )
    ctx.tokenizer = export_tokenizer(ctx.model, ctx.staging, MAX_TEXT_LEN, ctx.log)
    _copy_control_convention(ctx)


def _copy_control_convention(ctx: BuildContext) -> None:
    """The ControlNet's control-image convention (`control_check`), where its folder records one, into the
    engine folder: `run` and the C++ runtime check control images against it."""
    from reference.loading import resolve_controlnet

    from .control_check import CONVENTION_FILE

    if ctx.request.controlnet_spec is None:
        return
    source = resolve_controlnet(ctx.request.controlnet_spec)
    if (source / CONVENTION_FILE).is_file():
        (ctx.staging / CONVENTION_FILE).write_bytes((source / CONVENTION_FILE).read_bytes())
        ctx.log(f"      {CONVENTION_FILE}")


def fp32_dict(rec: GraphRecord, source: Manifest) -> dict:
    """A manifest record as the exporter's dict (the `lcm` constants put back on the denoiser)."""
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name not in ("details",)}
    d.update(rec.details)
    d["precision"] = str(rec.precision)
    d["inputs"] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in rec.inputs]
    d["outputs"] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in rec.outputs]
    d["files"] = list(rec.files)
    if rec.graph.startswith("denoiser_lcm"):
        lcm = source.lcm
        d["lcm"] = {
            "timesteps": list(lcm.timesteps),
            "c_skip": list(lcm.c_skip),
            "c_out": list(lcm.c_out),
            "alphas_cumprod": list(lcm.alphas_cumprod),
        }
    return d


def _graph_count(ctx: BuildContext) -> int:
    from .graphs import graph_specs

    specs = graph_specs(ctx.request.steps, ctx.model.controlnet is not None, preview=ctx.model.vae_preview is not None)
    return sum(len(ctx.resolutions) if s.spatial else 1 for s in specs)


def _verify(ctx: BuildContext) -> None:
    from .verify import failures, format_table

    ctx.parity = ctx.target.backend.verify(ctx)
    ctx.log(format_table(ctx.parity))
    if not ctx.parity.ok:
        raise GateFailed(
            f"{ctx.target.name}: " + "; ".join(failures(ctx.parity)) + f". Nothing was installed at "
            f"{ctx.out}; the figures are in the table above"
        )


def _install(ctx: BuildContext) -> None:
    ctx.build_info["seconds"] = round(time.perf_counter() - ctx.started, 1)
    write_manifest(ctx.staging, ctx.assemble())
    engine_folder.install(ctx.staging, ctx.out)


# -- the pipeline ------------------------------------------------------------------------------------------------
def run_stages(stages: list[Stage], ctx: BuildContext, first: int, total: int) -> None:
    for i, stage in enumerate(stages, first):
        ctx.log(f"[{i}/{total}] {stage.name}")
        ctx.stage_meter = StageMeter(stage.name)
        stage.run(ctx)
        record, ctx.stage_meter = ctx.stage_meter.record(), None
        ctx.stages.append(record)
        ctx.log(f"      [{i}/{total}] {format_stage(record)}")
        release_freed_memory()  # the next stage starts from what is still in use, not the heap's high mark


def build(request: BuildRequest, log: Log = default_log) -> tuple[Path, Manifest, bool]:
    """Build (or reuse) an engine folder; returns (folder, manifest, reused).

    `request.verify=False` (the `export` command) skips the verify stage: the folder is complete and
    loadable, with `parity: null` until `pixart-export parity` measures it.
    """
    target = request.target
    out = (
        Path(request.out)
        if request.out is not None
        else Path("engines") / engine_folder.engine_name(target.name, request.model_spec, request.controlnet_spec)
    )
    ctx = BuildContext(request=request, out=out, log=log)
    engine_folder.check_destination(out)
    for path in engine_folder.clean_leftovers(out):
        log(f"removed {path} (left by an interrupted build)")
    load = Stage(
        f"load model {request.model_spec}"
        + (f" + ControlNet {request.controlnet_spec}" if request.controlnet_spec else ""),
        _load,
    )
    export = Stage(
        "export fp32 ONNX graphs and tokenizer"
        if request.onnx_from is None
        else f"fp32 ONNX graphs from {request.onnx_from}, tokenizer",
        _export,
    )
    verify = [Stage("verify against the reference", _verify)] if request.verify else []
    install = Stage(f"write manifest.json, install {out}", _install)
    # the backend names its stages from the request alone (they run later), so the pipeline can number
    # every stage from the first
    ctx.options = target.backend.options(target, None) if request.options is None else dict(request.options)
    stages = [load, export, *target.backend.stages(ctx), *verify, install]
    run_stages(stages[:1], ctx, 1, len(stages))
    if not request.force and (manifest := engine_folder.reusable(out, ctx.key, request.verify)) is not None:
        log(f"up to date: {out} (build key {ctx.key[:12]}, every file matches its sha256); reusing it")
        return out, manifest, True
    with engine_folder.staging(out) as staging, engine_folder.staging(out, "scratch") as scratch:
        ctx.staging, ctx.scratch = staging, scratch
        if not request.verify:
            log("      (verification skipped: run `pixart-export parity` on the folder)")
        run_stages(stages[1:], ctx, 2, len(stages))
    manifest = target.backend.finish(target, out, read_manifest(out), log)
    log(f"built {out} in {time.perf_counter() - ctx.started:.0f} s")
    return out, manifest, False


def build_target(target_name: str, model_spec: str, **kwargs) -> tuple[Path, Manifest, bool]:
    """`build(BuildRequest(get_target(target_name), model_spec, **kwargs))`, for scripts and tests."""
    log = kwargs.pop("log", default_log)
    return build(BuildRequest(get_target(target_name), model_spec, **kwargs), log=log)
