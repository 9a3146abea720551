"""A T5 encoder computed in fp32 one block at a time from its safetensors files: the fp32 reference of a
text encoder that does not fit in memory beside everything else (T5-XXL: 17.7 GiB in fp32).

The module is transformers' own `T5EncoderModel`, built on the meta device; a forward pre-hook on each
`T5Block` materialises that block's weights from the files (fp32 or bf16 storage, computed in fp32)
and a forward hook drops them again, so the arithmetic is exactly the resident model's while at most
one block (~0.8 GB at XXL size) plus the embedding is in memory. The price is reading every block from
disk on every call (19 GB for XXL), so results are cached by token ids and mask: the reference
pipeline, calibration and the gates encode the same prompts many times.

`should_stream(folder)` decides by the weights' fp32 size (`STREAM_ABOVE_BYTES`, overridable with the
environment variable `PIXART_T5_STREAM_BYTES`, which the tests use to stream a small T5).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import WeightsError

#: T5 encoders above this fp32 size are streamed (T5-XL, 1.2 B parameters, is 4.9 GB; XXL is 19 GB).
STREAM_ABOVE_BYTES = 6 * 2**30
#: how many distinct (ids, mask) batches the streamed encoder remembers
CACHE_ENTRIES = 64


def _dtype_bytes(dtype: str) -> int:
    return {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}[dtype]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a transformers model folder (sharded with an index, or one file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def tensor_offsets(folder: Path) -> dict[str, tuple[Path, int, str, tuple[int, ...]]]:
    """name -> (file, byte offset, dtype, shape), from the safetensors headers only (nothing loaded)."""
    table = {}
    for file in weight_files(folder):
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                table[name] = (file, 8 + size + info["data_offsets"][0], info["dtype"], tuple(info["shape"]))
    return table


def read_fp32(file: Path, offset: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One stored tensor as fp32, read with plain file reads (not a memory map: mapped file pages count
    in the process's resident memory, and a model's worth of them would double the peak)."""
    import numpy as np

    kinds = {"F32": (np.float32, 4), "BF16": (np.uint16, 2), "F16": (np.float16, 2)}
    if dtype not in kinds:
        raise WeightsError(f"{file}: tensor dtype {dtype} is not a float type T5 is stored in")
    np_dtype, size = kinds[dtype]
    count = 1
    for d in shape:
        count *= d
    buf = np.empty(count, dtype=np_dtype)
    with open(file, "rb") as f:
        f.seek(offset)
        if f.readinto(memoryview(buf).cast("B")) != count * size:
            raise WeightsError(f"{file}: truncated tensor")
    t = torch.from_numpy(buf)
    if dtype == "BF16":
        t = t.view(torch.bfloat16)
    return t.to(torch.float32).reshape(shape)


def tensor_table(folder: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """name -> (file, dtype, shape)."""
    return {k: (f, d, s) for k, (f, _, d, s) in tensor_offsets(folder).items()}


def fp32_bytes(folder: Path) -> int:
    """The size of the folder's weights in fp32 (what a resident fp32 reference would hold)."""
    total = 0
    for _, dtype, shape in tensor_table(folder).values():
        n = 1
        for d in shape:
            n *= d
        total += n * max(4, _dtype_bytes(dtype))
    return total


def stream_threshold() -> int:
    value = os.environ.get("PIXART_T5_STREAM_BYTES")
    return int(value) if value else STREAM_ABOVE_BYTES


def should_stream(folder: Path) -> bool:
    return bool(weight_files(folder)) and fp32_bytes(folder) > stream_threshold()


class StreamedT5Encoder(torch.nn.Module):
    """`T5EncoderModel` in fp32 with its blocks' weights read from `folder` for each call (see module doc)."""

    streamed = True

    def __init__(self, folder: Path):
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        self.folder = Path(folder)
        self.config = T5Config.from_pretrained(str(self.folder), local_files_only=True)
        with torch.device("meta"):
            self.model = T5EncoderModel(self.config).eval()
        self.offsets = tensor_offsets(self.folder)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        # resident: the embedding (tied to encoder.embed_tokens) and the final norm (0.5 GB at XXL size)
        shared = self._read("shared.weight" if "shared.weight" in self.offsets else "encoder.embed_tokens.weight")
        self.model.shared = torch.nn.Embedding.from_pretrained(shared, freeze=True)
        self.model.encoder.embed_tokens = self.model.shared
        self._materialise(self.model.encoder.final_layer_norm, "encoder.final_layer_norm.")
        for i, block in enumerate(self.model.encoder.block):
            block.register_forward_pre_hook(lambda m, args, i=i: self._materialise(m, f"encoder.block.{i}."))
            block.register_forward_hook(lambda m, args, out: self._drop(m))

    def _read(self, name: str) -> torch.Tensor:
        if name not in self.offsets:
            raise WeightsError(f"{self.folder}: no tensor {name} in its safetensors files")
        return read_fp32(*self.offsets[name])

    def _materialise(self, module: torch.nn.Module, prefix: str) -> None:
        """Give `module` real fp32 storage and load its weights from the files (strict: every key)."""
        module.to_empty(device="cpu")
        own = module.state_dict()
        state = {k: self._read(prefix + k) for k in own}
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise WeightsError(
                    f"{self.folder}: {prefix + k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}"
                )
        module.load_state_dict(state, strict=True)

    @staticmethod
    def _drop(module: torch.nn.Module) -> None:
        """Back to the meta device: the block's weights are freed until its next call."""
        module.to_empty(device="meta")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        shape = repr(tuple(input_ids.shape)).encode()
        key = shape + input_ids.numpy().tobytes() + b"|" + attention_mask.numpy().tobytes()
        if key in self._cache:
            self._cache.move_to_end(key)
            return (self._cache[key].clone(),)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        self._cache[key] = out.clone()
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return (out,)
