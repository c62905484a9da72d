"""Command line: ``ega-infer demo`` (the main job on the embedded default) and ``ega-infer info``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ega-infer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="serve a few requests on the embedded default model and catalog")
    demo.add_argument("--model", default="tiny", help="preset name or saved model directory")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--requests", type=int, default=4)
    demo.add_argument("--items", type=int, default=2000, help="items in the generated catalog")
    demo.add_argument("--mode", choices=("lists", "candidates"), default=None)
    demo.add_argument("--seed", type=int, default=0)
    info = sub.add_parser("info", help="what was built: backends, CUDA architectures, versions, GPU")
    info.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return _info(args)


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from .demo import synthetic_catalog, synthetic_requests
    from .engine import Engine

    engine = Engine.from_pretrained(args.model, device=args.device)
    config = engine.default_config
    if args.mode:
        config = dataclasses.replace(config, mode=args.mode)
    catalog = synthetic_catalog(engine.config, n_items=args.items, seed=args.seed)
    engine.set_catalog(catalog)
    requests = synthetic_requests(catalog, engine.config, n=args.requests, seed=args.seed)
    engine.generate(requests[:1], config)  # warm-up
    slates = engine.generate(requests, config)

    print(f"model {engine.config.name!r}: {engine.model.num_parameters():,} parameters on {engine.device}")
    print(f"catalog: {catalog!r}")
    print(f"decode: mode={config.mode} beams={config.beams} slots={config.num_slots} "
          f"alpha={config.alpha} beta={config.beta}\n")
    for slate in slates:
        if not slate.ok:
            print(f"request {slate.request_id}: ERROR {slate.error}\n")
            continue
        print(f"request {slate.request_id}: expected revenue {slate.expected_revenue:.4f} per view")
        print("  slot  item      ad   creative  bid     pay     pctr    pctr_cr  pcvr")
        for s in slate.slots:
            creative = s.creative_id if s.creative_id is not None else "-"
            print(f"  {s.slot:<5} {s.item_id:<9} {'ad' if s.is_ad else '--':<4} {creative!s:<9} "
                  f"{s.bid:<7.2f} {s.payment:<7.3f} {s.pctr_poi:<7.4f} {s.pctr_creative:<8.4f} {s.pcvr:.4f}")
        others = ", ".join(f"{c.item_ids[:3]}.. {c.score:.2f}" for c in slate.candidates[1:4])
        print(f"  other candidates (items.., log-prob): {others}\n")
    stages = slates[0].latency_ms
    print("stage latency (ms, whole batch of {}): ".format(len(requests))
          + "  ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return 0


def _info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from ._native import native_info
    from .ops._dispatch import triton_available

    info = {
        "ega_infer": __import__("ega_infer").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version() if triton_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **native_info(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return 0


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
