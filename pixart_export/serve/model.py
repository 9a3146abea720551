"""The Triton Python-backend model `pixart`: an engine folder behind the KServe v2 protocol.

Triton runs this in its Python-backend stub process (`server.py` lays out the model repository whose
`model.py` imports this class). `initialize` loads the folder with `runtime.load` (the same validation
as `run`: manifest, registry, host, every file's sha256) and draws one warm-up image, so the model, and
with it the server, is ready only once it can answer. `execute` gets the requests Triton's dynamic
batcher gathered; each request is parsed on its own (`requests.parse`), a bad one gets a one-line
INVALID_ARG error (HTTP 400, gRPC INVALID_ARGUMENT) and the others of the batch are still served.

The stub converts tensors with the numpy 1.x C interface (BYTES inputs crash it under numpy 2), which is
why the serving environment has numpy < 2 (nvidia-pytriton's own requirement; `server.check_environment`).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ..errors import UserError
from . import requests as serve_requests

LOG = logging.getLogger("pixart_export.serve")
INPUTS = ("prompt", "seed", "control_image", "conditioning_scale", "height", "width")


class TritonPythonModel:
    def initialize(self, args):
        from .. import runtime

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = {"threads": int(params["threads"])} if params.get("threads") else {}
        self.pipe = runtime.load(params["engine"], **options)
        start = time.perf_counter()
        self.one_at_a_time = not batch_invariant(self.pipe)  # also the warm-up: first-run costs paid here
        print(
            f"pixart: warm-up in {time.perf_counter() - start:.2f} s; "
            + (
                "this folder's graphs give other pixels at batch 2 than alone, so images run one at a time "
                "(each equal to `run --seed S`; requests are still queued and batched by Triton)"
                if self.one_at_a_time
                else "images at batch 2 equal their images alone: images of a batch run together"
            ),
            flush=True,
        )

    def _tensors(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name in INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out

    def execute(self, requests):
        responses: list = [None] * len(requests)
        items, owners = [], []
        for r, request in enumerate(requests):
            try:
                parsed = serve_requests.parse(self._tensors(request), self.pipe)
            except (serve_requests.RequestError, UserError) as error:
                responses[r] = _error(str(error), pb_utils.TritonError.INVALID_ARG)
                continue
            except Exception as error:  # a bug: this request fails with one line, the batch goes on
                LOG.exception("request check failed")
                responses[r] = _error(_one_line(error))
                continue
            items += parsed
            owners += [r] * len(parsed)
        images = serve_requests.generate(
            self.pipe, items, on_error=lambda e: LOG.exception("generation failed"), one_at_a_time=self.one_at_a_time
        )
        for r in range(len(requests)):
            if responses[r] is not None:
                continue
            mine = [images[i] for i, owner in enumerate(owners) if owner == r]
            failed = next((x for x in mine if isinstance(x, Exception)), None)
            if isinstance(failed, UserError):
                responses[r] = _error(str(failed), pb_utils.TritonError.INVALID_ARG)
            elif failed is not None:
                responses[r] = _error(_one_line(failed))
            else:
                batch = np.ascontiguousarray(np.stack(mine))
                responses[r] = pb_utils.InferenceResponse([pb_utils.Tensor("image", batch)])
        return responses

    def finalize(self):
        self.pipe = None


def batch_invariant(pipe) -> bool:
    """Whether two images drawn in one batch equal, bit for bit, the same two drawn alone. Their noise
    always does (one seed each); the kernels may not: onnxruntime's fp32 CPU kernels measured equal,
    OpenVINO's int8 ones did not (other GEMM blocking per batch size)."""
    pair = pipe(["warm-up", "warm-up"], seeds=[0, 1], output="np")
    alone = np.concatenate([pipe(["warm-up"], seeds=[s], output="np") for s in (0, 1)])
    return bool(np.array_equal(pair, alone))


def _one_line(error: Exception) -> str:
    return (f"internal error: {type(error).__name__}: {error}".splitlines() or ["internal error"])[0]


def _error(message: str, code=None):
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
