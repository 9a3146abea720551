"""`pixart-export targets`: the target registry (works with no backend installed)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("targets", help="list build targets and which are implemented",
                       description="List the targets of ARCHITECTURE.md: backend, device, precisions, notes; for "
                                   "TensorRT targets also the TensorRT versions and optimisation profile.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..targets import TARGETS

    print(f"{'target':12} {'backend':12} {'device':9} {'ready':6} precisions / notes")
    for t in TARGETS.values():
        notes = "; ".join(x for x in (", ".join(t.precisions), t.notes) if x)
        print(f"{t.name:12} {t.backend:12} {t.device:9} {'yes' if t.implemented else 'no':6} {notes}")
        if t.trt is not None:
            lo, hi = t.trt.tensorrt
            p = t.trt.profile
            print(f"{'':41} TensorRT {lo}{' to ' + hi if hi else '+'}; bundle: {', '.join(t.trt.prepared)}; "
                  f"batch {p.batch[0]}/{p.batch[1]}/{p.batch[2]} (min/opt/max), {p.min_px}-{p.max_px} px")
    return 0
