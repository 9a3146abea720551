"""The graph contracts of ARCHITECTURE.md as data: one `GraphSpec` per graph (names, dtypes, shapes,
which axes are dynamic, tolerance and why). Every other stage reads names from here or from the
manifest, never spells them itself.

Torch-free on purpose: the runtime and the manifest checks import this module on hosts without
PyTorch.

Shapes are written with symbols resolved per model and resolution bucket by `Dims`:
B batch (the only dynamic axis), L text tokens (120, static: the pipeline always pads to it),
C text width, h/w latent size, H/W image size, T tokens, D hidden width, N ControlNet copies,
S = K-1 step noises. Latent size is *static per resolution bucket*: the sin-cos position table and
the token count are baked in at trace time (so every backend, TensorRT included, sees fixed shapes
and can optimise for them); several buckets are several files, `<graph>_<H>x<W>.onnx`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

OPSET = 17
BATCH = "B"

#: Tolerances of an fp32 graph against the fp32 PyTorch reference. Both sides run the same fp32
#: arithmetic; they differ only in kernel choice and summation order (MatMul/Conv blocking, fused
#: softmax/LayerNorm in onnxruntime), i.e. rounding at ~1e-7 relative per op that grows mildly
#: through depth. 1e-4 relative L2 leaves two orders of magnitude above what we measure and still
#: catches any real bug (a wrong constant or a dropped residual moves it to >= 1e-3).
FP32_REL_L2 = 1e-4
#: Max abs error relative to the reference's largest magnitude; same reasoning, per element.
FP32_MAX_ABS_REL = 1e-3
#: End-to-end image PSNR (uint8 images, same seed): identical fp32 numbers up to rounding flip at
#: most a few pixels by one level (PSNR > 60 dB); 40 dB still means "visually identical" and fails on
#: any real error (a wrong step or scaling gives < 20 dB).
MIN_PSNR_DB = 40.0


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32" | "int64"
    dims: tuple[str | int, ...]  # symbols resolved by Dims.shape


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph. `spatial`: one file per resolution bucket. `control`: needs a ControlNet."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spatial: bool = True
    control: bool = False
    rel_l2: float = FP32_REL_L2
    max_abs_rel: float = FP32_MAX_ABS_REL
    why: str = "fp32 vs fp32 reference: only summation order differs"
    #: Exported from a PyTorch module (`export.wrappers`) and measured against it by `verify.graph_parity`;
    #: False for graphs a backend writes itself and checks at build (`LCM_UPDATE`).
    torch_reference: bool = True

    def filename(self, height: int | None = None, width: int | None = None) -> str:
        return f"{self.name}_{height}x{width}.onnx" if self.spatial else f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis: "B"}}, the form torch.onnx.export takes."""
        return {t.name: {i: BATCH for i, d in enumerate(t.dims) if d == BATCH} for t in self.inputs + self.outputs}


@dataclass(frozen=True)
class Dims:
    """The numbers behind the symbols for one model and one resolution bucket (h, w latent size)."""

    L: int
    C: int
    D: int
    N: int
    h: int = 0
    w: int = 0
    patch: int = 2
    steps: int = 4
    vae_factor: int = 8
    vocab: int = 32128

    def value(self, sym: str | int) -> int | str:
        if isinstance(sym, int) or sym == BATCH:
            return sym
        table = {
            "L": self.L,
            "C": self.C,
            "D": self.D,
            "N": self.N,
            "h": self.h,
            "w": self.w,
            "H": self.h * self.vae_factor,
            "W": self.w * self.vae_factor,
            "T": (self.h // self.patch) * (self.w // self.patch),
            "S": self.steps - 1,
        }
        return table[sym]

    def shape(self, tensor: TensorSpec, batch: int | None = None) -> list:
        """Concrete shape; the batch axis stays "B" unless `batch` is given."""
        out = [self.value(d) for d in tensor.dims]
        return [batch if (d == BATCH and batch is not None) else d for d in out]


def _f(name, *dims):
    return TensorSpec(name, "float32", tuple(dims))


def _i(name, *dims):
    return TensorSpec(name, "int64", tuple(dims))


LATENTS = _f("latents", "B", 4, "h", "w")
EMBEDS = _f("prompt_embeds", "B", "L", "C")
TEXT_MASK = _i("prompt_attention_mask", "B", "L")
CONTROL_LATENTS = _f("control_latents", "B", 4, "h", "w")
SCALE = _f("conditioning_scale", 1)
RESIDUALS = _f("control_residuals", "N", "B", "T", "D")
#: Multi-aspect (1024-MS) models' extra conditions, as diffusers' PixArtAlphaPipeline builds them:
#: (height, width) in pixels and height / width, per row.
RESOLUTION = _f("resolution", "B", 2)
ASPECT_RATIO = _f("aspect_ratio", "B", 1)

TEXT_ENCODER = GraphSpec(
    "text_encoder",
    (_i("input_ids", "B", "L"), _i("attention_mask", "B", "L")),
    (_f("prompt_embeds", "B", "L", "C"),),
    spatial=False,
)
TRANSFORMER = GraphSpec(
    "transformer", (LATENTS, _f("timestep", "B"), EMBEDS, TEXT_MASK, RESIDUALS), (_f("noise_pred", "B", 4, "h", "w"),)
)
CONTROLNET = GraphSpec(
    "controlnet", (LATENTS, _f("timestep", "B"), EMBEDS, TEXT_MASK, CONTROL_LATENTS, SCALE), (RESIDUALS,), control=True
)
VAE_DECODER = GraphSpec("vae_decoder", (_f("denoised", "B", 4, "h", "w"),), (_f("image", "B", 3, "H", "W"),))
VAE_ENCODER = GraphSpec("vae_encoder", (_f("image", "B", 3, "H", "W"),), (_f("latents", "B", 4, "h", "w"),))
#: The optional preview decoder (a diffusers AutoencoderTiny reading the same latents; `preview.py`): exported
#: only where the model carries one (`build --preview-decoder DIR`).
VAE_DECODER_PREVIEW = GraphSpec(
    "vae_decoder_preview", (_f("denoised", "B", 4, "h", "w"),), (_f("image", "B", 3, "H", "W"),)
)
#: The LCM update between two one-step transformer calls, x_next = a x + b eps + c noise with coef = (a, b, c)
#: of the step (backends/tensorrt/loop.py): what the TensorRT K-step loop runs beside the `transformer`
#: engine. Not exported from PyTorch: the TensorRT build writes it (fp32) per bucket and checks it in
#: onnxruntime against `reference.sampling.lcm_step`.
LCM_UPDATE = GraphSpec(
    "lcm_update",
    (LATENTS, _f("noise_pred", "B", 4, "h", "w"), _f("step_noise", "B", 4, "h", "w"), _f("coef", 3)),
    (_f("latents_next", "B", 4, "h", "w"),),
    why="fp32 elementwise affine step vs the reference LCM step: rounding only",
    torch_reference=False,
)
#: Graphs a backend adds to a bundle beside the exported ones (never exported by `graph_specs`).
BACKEND_SPECS = (LCM_UPDATE,)


def denoiser_spec(steps: int, control: bool) -> GraphSpec:
    """`denoiser_lcm{K}` (and `denoiser_lcm{K}_controlnet`): the whole unrolled LCM loop."""
    inputs = [LATENTS, _f("step_noise", "S", "B", 4, "h", "w"), EMBEDS, TEXT_MASK]
    if control:
        inputs += [CONTROL_LATENTS, SCALE]
    name = f"denoiser_lcm{steps}" + ("_controlnet" if control else "")
    return GraphSpec(
        name,
        tuple(inputs),
        (_f("denoised", "B", 4, "h", "w"),),
        control=control,
        why="fp32, K transformer calls in sequence: rounding compounds over K steps but "
        "stays far below 1e-4 (measured)",
    )


def with_size_conditions(spec: GraphSpec) -> GraphSpec:
    """`spec` with the multi-aspect inputs appended (the DiT graphs of a 1024-MS model)."""
    return replace(spec, inputs=spec.inputs + (RESOLUTION, ASPECT_RATIO))


def takes_size_conditions(name: str) -> bool:
    return name in ("transformer", "controlnet") or name.startswith("denoiser_lcm")


def graph_specs(steps: int, control: bool, multi_aspect: bool = False, preview: bool = False) -> list[GraphSpec]:
    """Every graph a build makes, in export order. `multi_aspect`: the DiT graphs take
    `resolution` and `aspect_ratio` too (ARCHITECTURE.md, multi-aspect 1024 px models); `preview`: the
    model carries a preview decoder (`vae_decoder_preview`)."""
    specs = _base_specs(steps, control) + ([VAE_DECODER_PREVIEW] if preview else [])
    return [with_size_conditions(s) if multi_aspect and takes_size_conditions(s.name) else s for s in specs]


def spec_for_record(record, steps: int, control: bool) -> GraphSpec:
    """The spec a graph record (a manifest `GraphRecord` or a build-time dict) was exported from
    (multi-aspect read off its inputs)."""
    inputs = record["inputs"] if isinstance(record, dict) else record.inputs
    graph = record["graph"] if isinstance(record, dict) else record.graph
    multi_aspect = any((t["name"] if isinstance(t, dict) else t.name) == RESOLUTION.name for t in inputs)
    return next(
        s for s in (*graph_specs(steps, control, multi_aspect, preview=True), *BACKEND_SPECS) if s.name == graph
    )


def _base_specs(steps: int, control: bool) -> list[GraphSpec]:
    specs = [TEXT_ENCODER, TRANSFORMER]
    if control:
        specs.append(CONTROLNET)
    specs.append(denoiser_spec(steps, False))
    if control:
        specs.append(denoiser_spec(steps, True))
    specs += [VAE_DECODER, VAE_ENCODER]
    return specs


def fixed_inputs(spec: GraphSpec, dims: Dims, batch: int = 2, seed: int = 1234) -> dict[str, np.ndarray]:
    """Deterministic inputs for parity checks and dummy export inputs (numpy, so torch-free).

    Masks pad the tail of each row differently, so padding handling is exercised; timesteps span the
    schedule; images are in [0, 1] as the contract says.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = dims.shape(t, batch)
        if t.name in ("prompt_attention_mask", "attention_mask"):
            mask = np.ones(shape, np.int64)
            for i in range(batch):
                mask[i, max(1, shape[1] // 3 + 7 * i) :] = 0
            out[t.name] = mask
        elif t.name == "input_ids":
            ids = rng.integers(3, dims.vocab, size=shape, dtype=np.int64)
            out[t.name] = ids  # the mask (set above or below) decides what counts
        elif t.name == "timestep":
            out[t.name] = np.array([999.0, 259.0, 759.0, 499.0] * batch, np.float32)[:batch]
        elif t.name == "conditioning_scale":
            out[t.name] = np.array([0.8], np.float32)
        elif t.name == "image":
            out[t.name] = rng.random(shape, dtype=np.float32)
        elif t.name == "resolution":
            out[t.name] = np.tile(np.array([[dims.value("H"), dims.value("W")]], np.float32), (batch, 1))
        elif t.name == "aspect_ratio":
            out[t.name] = np.full((batch, 1), dims.value("H") / dims.value("W"), np.float32)
        elif t.name == "control_residuals":
            out[t.name] = 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            out[t.name] = rng.standard_normal(shape, dtype=np.float32)
    if "input_ids" in out:
        out["input_ids"] = np.where(out["attention_mask"] == 1, out["input_ids"], 0)
    return out
