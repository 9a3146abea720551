"""`pixart-export targets`: the target registry (works with no backend installed).

List the targets of ARCHITECTURE.md: backend, device, precisions, where their figures are verified,
notes; for TensorRT targets also the TensorRT versions and optimisation profile.
"""

from __future__ import annotations

import argparse

from . import _options


def register(sub: argparse._SubParsersAction) -> None:
    p = _options.subcommand(
        sub, __doc__, "targets", help="list build targets: backend, device, precisions, where verified"
    )
    _options.add_json_option(p)
    p.set_defaults(func=run)


def _row(t) -> dict:
    row = {
        "name": t.name,
        "backend": t.backend.name,
        "extra": t.backend.extra,
        "device": t.device,
        "precisions": list(t.precisions),
        "verified": t.verified,
        "notes": t.notes,
    }
    if t.trt is not None:
        row["tensorrt"] = {
            "versions": list(t.trt.tensorrt),
            "prepared": [str(p) for p in t.trt.prepared],
            "batch": list(t.trt.profile.batch),
            "px": [t.trt.profile.min_px, t.trt.profile.max_px],
        }
    return row


def run(args: argparse.Namespace) -> int:
    from ..targets import TARGETS

    rows = [_row(t) for t in TARGETS.values()]
    if args.json:
        _options.emit_json(rows)
        return 0
    print(f"{'target':12} {'backend':12} {'device':10} {'verified':33} precisions / notes")
    for r in rows:
        notes = "; ".join(x for x in (", ".join(r["precisions"]), r["notes"]) if x)
        print(f"{r['name']:12} {r['backend']:12} {r['device']:10} {r['verified']:33} {notes}")
        trt = r.get("tensorrt")
        if trt:
            (lo, hi), b, px = trt["versions"], trt["batch"], trt["px"]
            print(
                f"{'':69} TensorRT {lo}{' to ' + hi if hi else '+'}; bundle: {', '.join(trt['prepared'])}; "
                f"batch {b[0]}/{b[1]}/{b[2]} (min/opt/max), {px[0]}-{px[1]} px"
            )
    return 0
