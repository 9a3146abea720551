"""`build`: model -> engine folder in one command: export, optimise, tokenizer, manifest, verify.

Stages run in a private temporary folder beside the destination (`.<name>.building-*`) which is
renamed into place only after parity passed, so an engine folder is never half-written: a failure
or Ctrl-C leaves the previous engine (if any) untouched and the temporary folder removed. A rebuild
whose build key (model identity + options + tool versions + code, see `identity.py`) equals the key
in the existing manifest, with every file still matching its sha256, is reused as it is.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import UserError
from .manifest import SCHEMA_VERSION, EngineError, check_files, file_table, read_manifest, write_json_atomic
from .targets import buildable_target

Log = Callable[[str], None]


def engine_name(target: str, model_spec: str, controlnet: str | None) -> str:
    stem = Path(str(model_spec)).stem if str(model_spec) != "tiny" else "tiny"
    return f"{target}-{stem}" + ("-controlnet" if controlnet else "")


def assemble_manifest(*, target, model, model_spec, controlnet_spec, identity, key, versions, steps, records,
                      resolutions, tokenizer, optimisation) -> dict:
    from reference.schedules import NUM_TRAIN_TIMESTEPS

    lcm = next(r["lcm"] for r in records if "lcm" in r)
    return {
        "schema_version": SCHEMA_VERSION,
        "toolchain": versions,
        "target": target.name,
        "backend": {"name": target.backend, "version": versions["onnxruntime"]},
        "device": target.device,
        "precision": {r["file"]: r["precision"] for r in records},
        "model": {"spec": str(model_spec), "controlnet_spec": None if controlnet_spec is None else str(controlnet_spec),
                  "layout": model.layout, "controlnet": model.controlnet is not None,
                  "config_hash": identity["config_hash"], "weights_hash": identity["weights_hash"],
                  "identity": identity["identity"], "configs": identity["configs"]},
        "build_key": key,
        "steps": steps,
        "lcm": {"spacing": model.lcm_spacing, "num_train_timesteps": NUM_TRAIN_TIMESTEPS, **lcm},
        "resolutions": [list(r) for r in resolutions],
        "latent_size_policy": "static per resolution bucket (one file per bucket); batch dynamic",
        "latent_channels": model.dit.config.in_channels,
        "vae_scale_factor": model.vae_scale_factor,
        "tokenizer": tokenizer,
        "graphs": records,
        "optimisation": optimisation,
        "parity": None,
        "files": {},
    }


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists())):
        raise UserError(f"{out}: exists and is not an engine folder; refusing to replace it (choose another --out)")


def _reusable(out: Path, key: str, verify: bool) -> dict | None:
    if not (out / "manifest.json").exists():
        return None
    try:
        manifest = read_manifest(out)
        if manifest.get("build_key") != key or (verify and not (manifest.get("parity") or {}).get("ok")):
            return None
        check_files(out, manifest, hashes=True)
        return manifest
    except EngineError:
        return None


def reuse_existing(out: Path, key: str, verify: bool, force: bool, log: Log) -> dict | None:
    """The manifest of `out` when it was built with `key` and every file is intact (else None, and
    the destination is checked to be an engine folder we may replace). Shared by every backend."""
    _check_destination(out)
    if force or (manifest := _reusable(out, key, verify)) is None:
        return None
    log(f"up to date: {out} (build key {key[:12]}, every file matches its sha256); reusing it")
    return manifest


def build(target_name: str, model_spec: str, out: Path | None = None, controlnet_spec: str | None = None,
          resolutions: list[tuple[int, int]] | None = None, steps: int = 4, lcm_spacing: str | None = None,
          optimise: bool = True, verify: bool = True, force: bool = False,
          log: Log = print, ov_int8=None, trt_int8: bool | None = None) -> tuple[Path, dict, bool]:
    """Build (or reuse) an engine; returns (folder, manifest, reused).

    `verify=False` (the `export` command) skips parity: the folder is complete and loadable, with
    `"parity": null` until `pixart-export parity` measures it.
    """
    target = buildable_target(target_name)
    if target.backend == "tensorrt":  # hook (issue #6): TensorRT targets build a verified bundle
        from .build_trt import build_bundle

        return build_bundle(target, model_spec, out, controlnet_spec, resolutions, steps, lcm_spacing, verify,
                            force, log, int8=trt_int8)
    if target.backend == "openvino":  # hook (issue #7): OpenVINO targets have their own builder
        from .build_ov import build_ov

        return build_ov(target, model_spec, out, controlnet_spec, resolutions, steps, lcm_spacing, verify, force,
                        log, int8=ov_int8)
    from reference.loading import load_model, resolve_controlnet
    from reference.text import MAX_TEXT_LEN

    from . import export_onnx, identity as ident, optimize_ort, parity
    from .export_tokenizer import export_tokenizer

    out = Path(out) if out is not None else Path("engines") / engine_name(target.name, model_spec, controlnet_spec)
    t0 = time.perf_counter()
    log(f"[1/6] load model {model_spec}" + (f" + ControlNet {controlnet_spec}" if controlnet_spec else ""))
    model = load_model(model_spec, controlnet=controlnet_spec, lcm_spacing=lcm_spacing)
    resolutions = resolutions or [(model.default_resolution, model.default_resolution)]
    export_onnx.check_exportable(model, resolutions, steps)
    identity = ident.model_identity(model, resolve_controlnet(controlnet_spec) if controlnet_spec else None)
    versions = ident.toolchain_versions()
    options = {"target": target.name, "resolutions": [list(r) for r in resolutions], "steps": steps,
               "lcm_spacing": model.lcm_spacing, "optimise": optimise, "verify": verify}
    key = ident.build_key(identity, options, versions)
    if (manifest := reuse_existing(out, key, verify, force, log)) is not None:
        return out, manifest, True

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        log(f"[2/6] export ONNX graphs (fp32, opset {export_onnx.OPSET}) -> {out}")
        records = export_onnx.export_model(model, tmp, resolutions, steps, on_graph=lambda n: log(f"      {n}"))
        log("[3/6] tokenizer files")
        tokenizer = export_tokenizer(model, tmp, MAX_TEXT_LEN)
        decisions = []
        if optimise:
            log("[4/6] onnxruntime offline optimisation (kept only where measured faster)")
            decisions = optimize_ort.optimise_graphs(tmp, records, on_graph=lambda n: log(f"      {n}"))
            for d in decisions:
                log(f"      {d['file']}: {d['reason']}")
        else:
            log("[4/6] optimisation skipped (--no-optimise)")
        manifest = assemble_manifest(target=target, model=model, model_spec=model_spec,
                                     controlnet_spec=controlnet_spec, identity=identity, key=key, versions=versions,
                                     steps=steps, records=records, resolutions=resolutions, tokenizer=tokenizer,
                                     optimisation=decisions)
        manifest["files"] = file_table(tmp)
        if verify:
            log("[5/6] verify against the reference (parity)")
            manifest["parity"] = parity.measure(model, tmp, manifest, on_item=lambda n: log(f"      {n}"))
            log(parity.format_table(manifest["parity"]))
            if not manifest["parity"]["ok"]:
                raise UserError(f"parity check failed (table above); the engine was not installed at {out}")
        else:
            log("[5/6] parity skipped (run `pixart-export parity` on the folder)")
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(tmp / "manifest.json", manifest)
        log(f"[6/6] install {out}")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"built {out} in {time.perf_counter() - t0:.0f} s")
    return out, manifest, False


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder over `out`; an old engine is moved aside first and then deleted."""
    tmp.chmod(0o755)
    old = None
    _check_destination(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
