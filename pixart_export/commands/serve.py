"""`pixart-export serve ENGINE_DIR`: serve an engine folder with Triton Inference Server (KServe v2).

One model, `pixart`: inputs `prompt` (BYTES) and `seed` (INT64) per image, `control_image` (UINT8
[H,W,3]) and `conditioning_scale` (FP32) on ControlNet folders, `height`/`width` (INT64) on multi-bucket
folders; output `image` (UINT8 [H,W,3]), the image `run --seed S` writes. Requests are batched across
clients up to --max-batch. The folder is copied and validated as `run` validates it; the server is
ready after a warm-up image. SIGTERM or Ctrl-C drains it (in-flight requests finish, new ones are
refused) and exits 0. Needs the `serve` extra (nvidia-pytriton, numpy < 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(sub, __doc__, "serve", help="serve an engine folder over KServe v2 (Triton; HTTP and gRPC)")
    p.add_argument("engine", type=Path, help="engine folder (from build)")
    port = _options.int_range(1, 65535, "a port number")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--http-port", type=port, default=8000, help="KServe v2 HTTP/REST port (default 8000)")
    p.add_argument("--grpc-port", type=port, default=8001, help="KServe v2 gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument(
        "--max-batch",
        type=_options.int_range(1, _options.MAX_IMAGES),
        default=8,
        help="most images in one call of the graphs, gathered across requests by Triton's dynamic batcher (default 8)",
    )
    p.add_argument(
        "--max-queue-delay-ms",
        type=_options.float_range(0, 10000),
        default=5.0,
        help="how long a request may wait for others to batch with (default 5 ms)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_options.int_range(1, 3600),
        default=30,
        help="seconds in-flight requests get to finish after SIGTERM (default 30)",
    )
    p.add_argument(
        "--threads",
        type=_options.int_range(1, _options.MAX_THREADS),
        default=None,
        help="CPU threads for CPU backends (default: all)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.server import ServeOptions, serve

    options = ServeOptions(
        address=args.address,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        max_queue_delay_ms=args.max_queue_delay_ms,
        drain_timeout=args.drain_timeout,
        threads=args.threads,
    )
    return serve(args.engine, options)
