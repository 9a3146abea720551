"""Serving: an engine folder behind Triton Inference Server (KServe v2 inference protocol, HTTP and gRPC).

`pixart-export serve ENGINE` (`server.serve`) starts `tritonserver` from the `serve` extra's
nvidia-pytriton wheel with one model, `pixart` (`model.py`, Triton's Python backend running the
torch-free runtime): inputs `prompt` (BYTES [1]) and `seed` (INT64 [1]) per image, `control_image`
(UINT8 [H, W, 3]) and `conditioning_scale` (FP32 [1]) on ControlNet folders, `height`/`width` (INT64 [1])
on multi-bucket folders; output `image` (UINT8 [H, W, 3]). Requests are batched by Triton's dynamic
batcher; every image comes from its own seed alone, so it is the same alone or in any batch, and the
same as `pixart-export run --seed S`. Request checks: `requests.py`.
"""
