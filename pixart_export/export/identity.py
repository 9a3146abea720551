"""What a model is, as hashes: its configs and weight files (`model_identity`), recorded in every
manifest and part of every build key (`engine_folder.build_key`), and the check that `parity`
measures an engine against the very model it was built from (`load_recorded_model`).
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

from ..engine_folder import canonical


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_paths(paths: list[Path], skip: tuple[str, ...] = ()) -> str:
    """sha256 over (relative name, sha256) of every file under `paths` (files or folders), sorted."""
    from ..manifest import sha256_file

    entries = []
    for base in paths:
        base = Path(base)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            rel = f.name if base.is_file() else f.relative_to(base).as_posix()
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            entries.append((f"{base.name}/{rel}", sha256_file(f)))
    return _sha(canonical(entries))


def _model_paths(model) -> list[Path]:
    from reference.loading import OFFICIAL_T5_DIRS, OFFICIAL_VAE_DIRS

    if model.layout == "diffusers":
        return [
            model.source / d
            for d in ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
            if (model.source / d).exists()
        ]
    root = model.source.parent
    extra = [root / d for d in OFFICIAL_T5_DIRS + OFFICIAL_VAE_DIRS if (root / d).is_dir()]
    return [model.source, *extra[:2]]


def model_identity(model, controlnet_path: Path | None) -> dict:
    """{config_hash, weights_hash, identity} of a loaded model (+ ControlNet), and the configs."""
    configs = {
        "transformer": model.dit.config.to_dict(),
        "controlnet": None if model.controlnet is None else model.controlnet.config.to_dict(),
        "text_encoder": model.text_encoder.config.to_dict(),
        "vae": dict(model.vae.config),
        "lcm_spacing": model.lcm_spacing,
    }
    config_hash = _sha(canonical(configs))
    paths = _model_paths(model) + ([Path(controlnet_path)] if controlnet_path else [])
    weights_hash = hash_paths(paths)
    return {
        "config_hash": config_hash,
        "weights_hash": weights_hash,
        "identity": _sha(f"{config_hash}:{weights_hash}".encode()),
        "configs": configs,
    }


def toolchain_versions() -> dict:
    """Versions of the export side (they enter every build key and the manifest)."""
    import onnx
    import torch

    from .. import __version__

    return {
        "pixart_export": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "platform": sys.platform,
    }


def load_recorded_model(manifest, model_spec: str | None = None, controlnet_spec: str | None = None):
    """The reference model an engine was built from (or the one given), refused unless its identity
    equals the manifest's: parity against another model's weights would measure nothing."""
    from reference.loading import load_model, resolve_controlnet

    from ..errors import UserError

    recorded = manifest.model
    model_spec = model_spec or recorded.spec
    controlnet_spec = controlnet_spec or recorded.controlnet_spec
    model = load_model(model_spec, controlnet=controlnet_spec, lcm_spacing=manifest.lcm.spacing)
    identity = model_identity(model, resolve_controlnet(controlnet_spec) if controlnet_spec else None)
    if identity["identity"] != recorded.identity:
        raise UserError(
            f"{model_spec}: not the model this engine was built from (identity "
            f"{identity['identity'][:12]} != {recorded.identity[:12]}); pass --model/--controlnet"
        )
    built = (manifest.build or {}).get("preview_decoder")
    if built:  # the preview decoder the folder was built with, where it still is as it was
        from .. import preview

        folder = preview.resolve(built["source"])
        if preview.digest(folder) != built["digest"]:
            raise UserError(
                f"{folder}: not the preview decoder this engine was built with (its files changed since the build)"
            )
        model.vae_preview = preview.load(folder)
    return model, model_spec
