"""Command line: ``ega-infer demo`` (the main job on the embedded default), ``eval``, ``bench``,
``info``, ``train``, ``compile``, ``serve`` (the HTTP API) and ``loadtest``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ega-infer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="serve held-out users of the synthetic world on the embedded default")
    demo.add_argument("--model", default="tiny", help="preset name or saved model directory")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--requests", type=int, default=3, help="slates to print")
    demo.add_argument("--eval-users", type=int, default=200, help="held-out users for the quality figures")
    demo.add_argument("--mode", choices=("lists", "candidates"), default=None)
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    ev = sub.add_parser("eval", help="EGA-V2 style table: RPM, CTR and Psi for the engine, GSP, VCG and a cascade")
    ev.add_argument("--model", default="tiny", help="preset name or saved model directory")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--users", type=int, default=None, help="held-out users (requests) to serve (default: all)")
    ev.add_argument("--redecode-users", type=int, default=None,
                    help="requests for the full re-decode Psi (default: all served users)")
    ev.add_argument("--frontier", action="store_true",
                    help="instead: every pricing rule on a grid of alpha under full re-decode, with a PNG plot")
    ev.add_argument("--alphas", default="0,0.6,1.2", help="with --frontier: comma-separated alpha grid (may be empty)")
    ev.add_argument("--mir-beams", default="16,32", help="with --frontier: beam widths of the maximal-in-range rule")
    ev.add_argument("--plot", default="bench/results/frontier.png", help="with --frontier: PNG path")
    ev.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    ev.add_argument("--ascent-steps", type=int, default=30, help="gradient-ascent steps of the misreport search")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    ev.add_argument("--json", action="store_true")
    bench = sub.add_parser("bench", help="end-to-end latency at batch 1 and throughput, per stage, JSON and a PNG plot")
    bench.add_argument("--preset", default="tiny")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    bench.add_argument("--mode", default=None, choices=("lists", "candidates"))
    bench.add_argument("--items", type=int, default=2000, help="synthetic catalog size")
    bench.add_argument("--batches", default="8,16,32,64,128,256", help="comma-separated batch sizes")
    bench.add_argument("--iters", type=int, default=3, help="timed batches per batch size")
    bench.add_argument("--batch1-iters", type=int, default=20)
    bench.add_argument("--threads", type=int, default=1,
                       help="torch threads on a CPU (set explicitly: an oversubscribed pool is far slower)")
    bench.add_argument("--out", default=None, help="JSON path (default bench/results/e2e_<preset>_<machine>_<time>.json)")
    bench.add_argument("--plot", default=None, help="PNG path (default: beside the JSON)")
    bench.add_argument("--hf", action="store_true",
                       help="instead: a random Hugging Face Llama served by the engine against transformers "
                            "generate on the same weights (needs transformers)")
    bench.add_argument("--hf-beams", default="16,64,256", help="with --hf: beam widths")
    bench.add_argument("--hf-items", type=int, default=100_000, help="with --hf: catalog size")
    info = sub.add_parser("info", help="what was built: backends, CUDA architectures, versions, GPU")
    info.add_argument("--json", action="store_true")
    train = sub.add_parser("train", help="train the tiny preset on the synthetic world (the embedded default)")
    train.add_argument("--out", required=True, help="directory for config.json, model.safetensors, training.json")
    train.add_argument("--seed", type=int, default=0)
    comp = sub.add_parser("compile", help="compile the Triton kernels ahead of time for GPU architectures "
                                          "(no GPU needed); serve with EGA_INFER_COMPILED=DIR")
    comp.add_argument("--arch", default="sm_80,sm_90", help="comma-separated architectures (sm_80,sm_90)")
    comp.add_argument("--out", required=True, help="directory for the Triton cache and manifest.json")
    comp.add_argument("--presets", default=None, help="comma-separated preset names (default: all)")
    comp.add_argument("--dtypes", default="float32,bfloat16", help="model dtypes to compile for")
    comp.add_argument("--jobs", type=int, default=None, help="parallel compiler processes (default: CPUs)")
    comp.add_argument("--no-cuda-check", action="store_true",
                      help="do not require ega_infer._cuda to carry code for every architecture")
    comp.add_argument("--keep-ir", action="store_true", help="keep Triton's TTIR/TTGIR/LLVM IR/PTX files too")
    from .serving.launch import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="the HTTP API (FastAPI + uvicorn): POST /v1/slates, /health, "
                                                     "/ready, /metrics, catalog and weight admin"))
    from .serving.loadgen import add_loadtest_arguments

    add_loadtest_arguments(sub.add_parser("loadtest", help="open-loop Poisson load against an ega-infer serve URL "
                                                           "(loopback only unless --allow-remote): JSON and a PNG"))
    args = parser.parse_args(argv)
    if args.command == "loadtest":
        from .serving.loadgen import run_loadtest

        return run_loadtest(args)
    if args.command == "serve":
        from .serving.launch import run_serve

        return run_serve(args)
    if args.command == "compile":
        return _compile(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "bench":
        return _bench(args)
    return _info(args)


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from .engine import Engine
    from .evaluation import incentive_report, interest_hit_rates, slate_metrics
    from .presets import PRESETS
    from .world import AdWorld, WorldConfig

    engine = Engine.from_pretrained(args.model, device=args.device)
    config = engine.default_config
    if args.mode == "candidates":  # one item per beam: slot rules do not apply
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0, forbidden_ad_slots=())
    elif args.mode:
        config = dataclasses.replace(config, mode=args.mode)
    world = AdWorld(WorldConfig(seed=args.seed), engine.config)
    catalog = world.catalog()
    engine.set_catalog(catalog)
    users = world.users("test")
    shown = users[: args.requests]
    engine.generate([world.request(int(users[0]))], config)  # warm-up
    slates = engine.generate([world.request(int(u)) for u in shown], config)

    preset = PRESETS.get(str(args.model))
    trained = "random weights" if preset is not None and preset.weights_dir is None else "trained weights"
    print(f"model {engine.config.name!r} ({trained}): {engine.model.num_parameters():,} parameters on {engine.device}")
    print(f"catalog: {catalog!r} from the synthetic world (seed {args.seed})")
    print(f"decode: mode={config.mode} beams={config.beams} slots={config.num_slots} "
          f"alpha={config.alpha} beta={config.beta}\n")
    for user, slate in zip(shown, slates):
        if not slate.ok:
            print(f"request {slate.request_id}: ERROR {slate.error}\n")
            continue
        interests = ", ".join(str(c) for c in world.user_interest[user].nonzero()[0])
        print(f"request {slate.request_id} (interest categories {interests}): "
              f"expected revenue {slate.expected_revenue:.4f} per view")
        print("  slot  item      cat  ad   creative  bid     pay     pctr    pctr_cr  pcvr")
        for s in slate.slots:
            creative = s.creative_id if s.creative_id is not None else "-"
            category = world.poi_category[catalog.index_of([s.item_id])[0]]
            print(f"  {s.slot:<5} {s.item_id:<9} {category:<4} {'ad' if s.is_ad else '--':<4} {creative!s:<9} "
                  f"{s.bid:<7.2f} {s.payment:<7.3f} {s.pctr_poi:<7.4f} {s.pctr_creative:<8.4f} {s.pcvr:.4f}")
        print()
    stages = slates[0].latency_ms
    print(f"stage latency (ms, whole batch of {len(shown)}): " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items()))

    eval_users = users[: args.eval_users]
    hits = interest_hit_rates(engine, world, eval_users)
    served = engine.generate([world.request(int(u)) for u in eval_users], config)
    metrics = slate_metrics(world, engine, eval_users, served)
    print(f"\nquality on {len(eval_users)} held-out users (true click model of the world):")
    print(f"  interest hit rate of the top {config.num_slots}: engine {hits['engine']:.3f}, "
          f"popularity {hits['popularity']:.3f}, random {hits['random']:.3f}")
    print(f"  served slates: ad share {metrics['ad_share']:.3f}, CTR {metrics['ctr']:.3f}, "
          f"expected revenue per mille {metrics['revenue_per_mille']:.1f}")
    if config.mode == "lists":
        report = incentive_report(engine, [world.request(int(u)) for u in eval_users[:100]], config)
        print("\npricing the same slates (100 held-out users; Psi = mean summed relative ex-post regret,")
        print("misreports re-run the list selection among the beams; grid = EGA gammas 0.2..2.0):")
        print("  mechanism        revenue/request   Psi (grid)   Psi (grid + ascent)")
        for name, row in report.items():
            print(f"  {name:<16} {row['revenue']:<17.4f} {row['psi_grid']:<12.4f} {row['psi']:.4f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import time

    from .engine import Engine
    from .evaluation import evaluation_table, format_table
    from .world import AdWorld, WorldConfig

    import torch

    from .evaluation import format_frontier, frontier, plot_frontier
    from .exceptions import ConfigError

    if args.threads < 1:
        raise ConfigError("--threads", f"is {args.threads}", "a positive int")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    engine = Engine.from_pretrained(args.model, device=args.device)
    world = AdWorld(WorldConfig(seed=args.seed), engine.config)
    engine.set_catalog(world.catalog())
    users = world.users("test")[: args.users]
    if args.frontier:
        try:
            alphas = tuple(float(a) for a in args.alphas.split(",") if a.strip())
        except ValueError:
            raise ConfigError("--alphas", f"is {args.alphas!r}", "comma-separated numbers") from None
        try:
            mir_beams = tuple(int(b) for b in args.mir_beams.split(",") if b.strip())
        except ValueError:
            raise ConfigError("--mir-beams", f"is {args.mir_beams!r}", "comma-separated ints") from None
        rows = frontier(engine, world, users, engine.default_config, alphas, mir_beams=mir_beams)
        plotted = bool(args.plot) and plot_frontier(rows, args.plot)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{len(users)} held-out users of the synthetic world (seed {args.seed}), model {engine.config.name!r}; "
              "full re-decode on every ad of any beam list, EGA's gamma grid\n")
        print(format_frontier(rows))
        print(f"\n(plot: {args.plot if plotted else 'not written (matplotlib missing)'}; "
              f"{time.perf_counter() - start:.0f} s)")
        return 0
    redecode = len(users) if args.redecode_users is None else args.redecode_users
    table = evaluation_table(engine, world, users, ascent_steps=args.ascent_steps, redecode_users=redecode)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{len(users)} held-out users of the synthetic world (seed {args.seed}), model {engine.config.name!r}; "
          f"RPM and CTR under the world's true click model, Psi = mean summed relative ex-post regret\n")
    print(format_table(table))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .benchmark import BenchConfig, HFBenchConfig, plot_bench, run_bench, run_hf_bench, save_result
    from .exceptions import ConfigError

    def ints(option: str, text: str) -> tuple[int, ...]:
        try:
            return tuple(int(b) for b in text.split(","))
        except ValueError:
            raise ConfigError(option, f"is {text!r}", "comma-separated integers") from None

    if args.threads < 1:
        raise ConfigError("--threads", f"is {args.threads}", "a positive int")
    import torch

    torch.set_num_threads(args.threads)
    if args.hf:
        result = run_hf_bench(HFBenchConfig(device=args.device, items=args.hf_items,
                                            beams=ints("--hf-beams", args.hf_beams)))
        print(f"wrote {save_result(result)}")
        return 0
    config = BenchConfig(preset=args.preset, device=args.device, dtype=args.dtype, mode=args.mode, n_items=args.items,
                         batches=ints("--batches", args.batches), iters=args.iters, batch1_iters=args.batch1_iters)
    result = run_bench(config)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    else:
        out = save_result(result)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    drawn = plot_bench(result, plot)
    print(f"wrote {out}" + (f" and {plot}" if drawn else " (no plot: matplotlib is not installed)"))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training import TrainingConfig, train_default

    train_default(args.out, TrainingConfig(seed=args.seed))
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


def _compile(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .compile import Coverage, compile_kernels
    from .exceptions import EgaInferError

    start = time.perf_counter()
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    try:
        manifest = compile_kernels(
            args.out, archs=args.arch, presets=split(args.presets) if args.presets else None,
            coverage=Coverage(dtypes=tuple(split(args.dtypes))), jobs=args.jobs,
            check_cuda=not args.no_cuda_check, keep_ir=args.keep_ir,
            progress=lambda line: print(line, file=sys.stderr),
        )
    except (EgaInferError, ValueError) as exc:
        print(f"ega-infer compile: {exc}", file=sys.stderr)
        return 2
    kernels = manifest["kernels"]
    print(f"{len(kernels)} kernel binaries ({len({k['kernel'] for k in kernels})} kernels x "
          f"{', '.join(manifest['archs'])}) for presets {', '.join(manifest['presets'])}, "
          f"{len(manifest['launchers'])} launcher stubs, in {time.perf_counter() - start:.0f} s "
          f"({sum(k['seconds'] for k in kernels):.0f} s of compiling)")
    for k in kernels:  # spills go to local memory: a tile that does not fit the register file
        if k["stack_bytes"]:
            print(f"spills: {k['kernel']} {k['arch']} {k['registers']} registers + {k['stack_bytes']} "
                  f"stack bytes per thread ({k['examples'][0]})")
    print(f"manifest: {Path(args.out).resolve() / 'manifest.json'}")
    print(f"serve with: EGA_INFER_COMPILED={Path(args.out).resolve()} (ega_infer.compile.use_compiled)")
    return 0


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
