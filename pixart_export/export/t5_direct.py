"""A T5 encoder too large for the fp32 export, made ready for a backend that converts it directly.

The fp32 ONNX export traces the resident fp32 model and holds the graph in memory: measured at 2.3x
the weights for the XL transformer (`benchmarks/results/export_xl.md`), that is about 41 GiB for
T5-XXL's 17.7 GiB, more than the 24 GiB hosts our users (and we) build on. Instead the weights are
loaded as bf16 (9.5 GiB for XXL) and every linear layer and the embedding compute in fp32 from them
(`F.linear(x, w_bf16.float())`): the traced graph holds bf16 constants followed by a Convert, which
OpenVINO keeps as compressed weights and NNCF quantises like fp32 ones. Activations, norms, softmax
and the attention arithmetic stay fp32, so the only change to T5's numbers is the rounding of its
weights to bf16 (8 significant bits): measured, the prompt embeddings move by a relative L2 well
below the int8 weight compression that follows (see `tests/test_t5_direct.py` and the full-size
figures in `benchmarks/results/full_size.md`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


class Bf16Linear(torch.nn.Module):
    """`nn.Linear` without bias whose weight is stored bf16 and used in fp32."""

    #: transformers' T5 feed-forward casts its input to `wo.weight.dtype` when that is a tensor; with no
    #: `weight` attribute of tensor type, it leaves the fp32 activations as they are
    weight = None

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("T5's linear layers have no bias")
        self.register_buffer("stored", linear.weight.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.stored.to(torch.float32))


class Bf16Embedding(torch.nn.Module):
    """`nn.Embedding` whose table is stored bf16; rows are looked up, then widened to fp32."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.register_buffer("stored", embedding.weight.detach().to(torch.bfloat16))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.stored).to(torch.float32)


def _swap(module: torch.nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Bf16Linear(child))
        elif isinstance(child, torch.nn.Embedding) and child.weight.numel() > 2**20:
            setattr(module, name, Bf16Embedding(child))  # the vocabulary table; T5's position bias stays
        else:
            _swap(child)


def load_bf16_weights(t5_dir: Path) -> torch.nn.Module:
    """T5EncoderModel from `t5_dir` (fp32 or bf16 files) with bf16-stored, fp32-computing weights.

    Built on the meta device and filled one stored tensor at a time (read as fp32, kept as bf16 where
    it is a linear layer's or the vocabulary's, fp32 for the norms and the position table), so the
    peak is the bf16 model plus the largest single tensor in fp32 (the 0.5 GB vocabulary for XXL).
    """
    from transformers import T5Config, T5EncoderModel

    from reference.t5_streamed import read_fp32, tensor_offsets

    config = T5Config.from_pretrained(str(t5_dir), local_files_only=True)
    with torch.device("meta"):
        model = T5EncoderModel(config).eval()
    stored = tensor_offsets(Path(t5_dir))
    own = dict(model.named_parameters(remove_duplicate=False))
    aliases = {"encoder.embed_tokens.weight": "shared.weight", "shared.weight": "encoder.embed_tokens.weight"}
    missing = [k for k in own if k not in stored and aliases.get(k) not in stored]
    if missing:
        raise ValueError(f"{t5_dir}: no stored tensor for {', '.join(missing[:5])}")
    for name in own:
        if name == "encoder.embed_tokens.weight":
            continue  # tied to `shared` below
        file, offset, dtype, shape = stored.get(name) or stored[aliases[name]]
        value = read_fp32(file, offset, dtype, shape)
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{t5_dir}: {name} has shape {tuple(value.shape)}, the config says {tuple(own[name].shape)}"
            )
        path, leaf = name.rsplit(".", 1)
        module = model.get_submodule(path)
        big = isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and value.numel() > 2**20
        setattr(module, leaf, torch.nn.Parameter(value.to(torch.bfloat16) if big else value, requires_grad=False))
        del value
    model.encoder.embed_tokens = model.shared
    _swap(model)
    model.encoder.embed_tokens = model.shared  # tied, as in the stored model (the swap made two)
    return model
