"""``ega-infer serve``: build the engine, its catalog and the server, then run the HTTP API on
uvicorn (in-process, or in front of Ray Serve replicas with ``--ray``)."""

from __future__ import annotations

import argparse
import sys
import threading

__all__ = ["add_serve_arguments", "run_serve", "load_engine"]


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="preset name or saved model directory")
    p.add_argument("--catalog", default=None,
                   help="catalog file (.safetensors, .parquet or a Parquet directory); default for a preset: "
                        "its synthetic world's catalog")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly: an oversubscribed pool is far slower)")
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-wait-ms", type=float, default=4.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--deadline-ms", type=float, default=None, help="default deadline of a request")
    p.add_argument("--max-beams", type=int, default=1024, help="widest beam schedule a request may ask for")
    p.add_argument("--cache-ttl", type=float, default=0.0, help="result cache TTL in seconds (0: no cache)")
    p.add_argument("--cache-size", type=int, default=10_000, help="result cache entries")
    p.add_argument("--admin-token-file", default=None,
                   help="file holding the admin bearer token (else EGA_INFER_ADMIN_TOKEN; neither: admin off)")
    p.add_argument("--catalog-dir", default=None, help="the only directory admin may load catalogs from")
    p.add_argument("--weights-dir", default=None, help="the only directory admin may load weights from")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20)
    p.add_argument("--no-warmup", action="store_true", help="ready at once (the first batches compile)")
    p.add_argument("--ray", action="store_true", help="serve from Ray Serve replicas (ega_infer.serving.ray_serve)")
    p.add_argument("--replicas", type=int, default=2, help="with --ray: replicas (one GPU each where GPUs exist)")


def load_engine(model: str, device: str, max_beams: int, catalog_path: str | None, seed: int = 0):
    """The engine of ``model`` with its catalog set: ``catalog_path``'s, or a preset's synthetic
    world's."""
    from ..catalog import load_catalog_file
    from ..engine import Engine
    from ..exceptions import ConfigError
    from ..presets import PRESETS
    from ..world import AdWorld, WorldConfig

    engine = Engine.from_pretrained(model, device=device, max_beams=max_beams)
    if catalog_path is not None:
        engine.set_catalog(load_catalog_file(catalog_path))
    elif model in PRESETS:
        engine.set_catalog(AdWorld(WorldConfig(seed=seed), engine.config).catalog())
    else:
        raise ConfigError("--catalog", "is missing", "a catalog file for a model directory")
    return engine


def run_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from ..exceptions import EgaInferError
    from .admin import AdminConfig, read_token
    from .http import create_app

    try:
        if args.threads < 1:
            raise EgaInferError(f"--threads: is {args.threads}; expected a positive int")
        torch.set_num_threads(args.threads)
        admin = AdminConfig(read_token(args.admin_token_file), args.catalog_dir, args.weights_dir)
        if args.ray:
            from .ray_serve import start_ray_backend

            backend = start_ray_backend(args)
        else:
            backend = _local_backend(args)
        app = create_app(backend, admin, max_body_bytes=args.max_body_bytes)
    except (EgaInferError, ValueError, OSError) as exc:
        print(f"ega-infer serve: {exc}", file=sys.stderr)
        return 2
    if hasattr(backend, "warm"):
        if args.no_warmup:
            backend.warmed = True
        else:  # /health answers while it warms; /ready waits for it
            threading.Thread(target=backend.warm, name="ega-infer-warmup", daemon=True).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    if hasattr(backend, "close"):
        backend.close()
    return 0


def _local_backend(args: argparse.Namespace):
    from .backend import LocalBackend
    from .cache import ResultCache
    from .server import Server

    engine = load_engine(args.model, args.device, args.max_beams, args.catalog)
    cache = ResultCache(args.cache_ttl, args.cache_size) if args.cache_ttl > 0 else None
    server = Server(engine, cache=cache, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue, default_deadline_ms=args.deadline_ms, torch_threads=args.threads)
    return LocalBackend(server)
