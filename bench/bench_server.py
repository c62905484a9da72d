"""The serving layer against the engine, in one run on one machine (tiny, the synthetic world):

* ``batcher``: the in-process ``Server`` with C closed-loop callers (threads) against
  ``Engine.generate`` on pre-formed batches of C and against one ``generate`` per request:
  requests/s, the ratio (goal >= 0.8), the callers' p50/p99;
* ``cache``: the server with a result cache when half the requests repeat a small pool of
  users, against the same traffic without it: requests/s and the gain;
* ``ray`` (when named): the same callers through Ray Serve with 1 and 2 replicas;
* ``soak`` (when named): ``--soak-rate`` over HTTP for ``--soak-seconds`` in 60 s windows: the
  server's RSS growth, p99 drift and errors;
* ``http``: ``ega-infer serve`` in a subprocess pinned to core 0, this client on core 1:
  sequential requests at low load (p50 over the in-process server's p50: the HTTP overhead,
  goal <= 2 ms), then open-loop Poisson rates (``serving.loadgen``) up to the highest with
  p99 <= 100 ms.

    python bench/bench_server.py [--callers 32] [--seconds 20] [--rates 5,10,20,30] [--skip-http] [--save]

Writes ``bench/results/server_<machine>_<time>.json`` with ``--save``. Not a test: timed numbers
belong here, never in asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import torch

from ega_infer.benchmark import result, save_result
from ega_infer.serving import ResultCache, Server
from ega_infer.serving.launch import load_engine
from ega_infer.world import AdWorld, WorldConfig


def _requests(engine, n: int, repeat_fraction: float = 0.0, pool: int = 8, seed: int = 0):
    world = AdWorld(WorldConfig(seed=0), engine.config)
    users = world.users("test")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user = users[rng.integers(pool)] if rng.random() < repeat_fraction else users[i % len(users)]
        r = world.request(int(user))
        out.append(type(r)(**{**r.__dict__, "request_id": f"r{i}"}))
    return out


def _closed_loop(server: Server, requests, callers: int, seconds: float) -> dict:
    """Callers take the next request of ``requests`` (cycled), each once per pass."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    taken = iter(range(10**9))

    def caller(k: int) -> None:
        while time.monotonic() < stop:
            with lock:
                i = next(taken)
            start = time.perf_counter()
            slate = server.submit(requests[i % len(requests)]).result()
            assert slate.ok, slate.error
            with lock:
                latencies.append((time.perf_counter() - start) * 1e3)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "requests": len(latencies)}


def _generate_rate(engine, requests, batch: int, seconds: float) -> dict:
    served, latencies, begin = 0, [], time.perf_counter()
    i = 0
    while time.perf_counter() - begin < seconds:
        chunk = [requests[(i + j) % len(requests)] for j in range(batch)]
        start = time.perf_counter()
        engine.generate(chunk)
        latencies.append((time.perf_counter() - start) * 1e3)
        served += batch
        i += batch
    elapsed = time.perf_counter() - begin
    return {"requests_per_s": served / elapsed, "batch_p50_ms": float(np.percentile(latencies, 50)),
            "batch_p99_ms": float(np.percentile(latencies, 99))}


def bench_batcher(engine, callers: int, seconds: float) -> dict:
    requests = _requests(engine, 256)
    engine.generate(requests[:callers])  # warm-up
    formed = _generate_rate(engine, requests, callers, seconds)
    single = _generate_rate(engine, requests, 1, seconds / 2)
    with Server(engine, max_batch_size=callers) as server:
        served = _closed_loop(server, requests, callers, seconds)
        sizes = server.stats()["batch_sizes"]
    return {"callers": callers, "server": served, "generate_batch": formed, "generate_batch1": single,
            "server_batch_sizes": {str(k): v for k, v in sizes.items()},
            "ratio_vs_batches": served["requests_per_s"] / formed["requests_per_s"],
            "ratio_vs_batch1": served["requests_per_s"] / single["requests_per_s"]}


def bench_cache(engine, callers: int, seconds: float) -> dict:
    from ega_infer.serving.loadgen import synthetic_payloads
    from ega_infer.serving.schemas import request_from_json

    # half the traffic repeats 8 users, half is content never seen before (more than a run serves)
    requests = [request_from_json(p) for p in synthetic_payloads(4000, repeat_fraction=0.5, seed=0)]
    out = {}
    for name, cache in (("no_cache", None), ("cache", ResultCache(ttl_s=60))):
        with Server(engine, max_batch_size=callers, cache=cache) as server:
            out[name] = _closed_loop(server, requests, callers, seconds)
            if cache is not None:
                out["cache_stats"] = cache.stats()
    out["gain"] = out["cache"]["requests_per_s"] / out["no_cache"]["requests_per_s"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServeProcess:
    """``ega-infer serve`` (tiny) in a subprocess on core 0, this process moved to core 1."""

    def __init__(self, pin: bool) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ega_infer", "serve", "--model", "tiny", "--port", str(self.port),
               "--threads", "1"]
        if pin:
            cmd = ["taskset", "-c", "0"] + cmd
            os.sched_setaffinity(0, {1})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "_ServeProcess":
        import httpx

        with httpx.Client(base_url=self.url, timeout=60) as http:
            for _ in range(600):
                try:
                    if http.get("/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the server did not get ready: {self.proc.stderr.read().decode()[-2000:]}")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def bench_soak(rate: float, seconds: float, window_s: float = 60.0) -> dict:
    """``rate`` for ``seconds`` in windows: the server's RSS and each window's p99 and errors."""
    from ega_infer.serving.loadgen import LoadConfig, run_load, synthetic_payloads

    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    payloads = synthetic_payloads(int(rate * window_s * 2), seed=0)  # the world the server's catalog is from
    windows = []
    with _ServeProcess(pin) as server:
        for w in range(max(1, int(seconds // window_s))):
            row = run_load(LoadConfig(url=server.url, rates=(rate,), duration_s=window_s, concurrency=64,
                                      seed=w), payloads)["rows"][0]
            errors = sum(v for k, v in row["statuses"].items() if k != "200")
            windows.append({"window": w, "rss_mib": server.rss_mib(), "p50_ms": row["latency_ms"]["p50"],
                            "p99_ms": row["latency_ms"]["p99"], "achieved_qps": row["achieved_qps"],
                            "errors": errors, "statuses": {k: v for k, v in row["statuses"].items() if v}})
            print(json.dumps(windows[-1]))
    first, last = windows[min(1, len(windows) - 1)], windows[-1]  # window 0 warms the allocator
    return {"rate": rate, "seconds": seconds, "windows": windows,
            "rss_growth": last["rss_mib"] / first["rss_mib"] - 1, "p99_drift": last["p99_ms"] / first["p99_ms"] - 1,
            "errors": sum(w["errors"] for w in windows)}


def bench_ray(engine, callers: int, seconds: float, replicas: tuple[int, ...] = (1, 2)) -> dict:
    """Ray Serve: ``callers`` closed-loop callers through ``RayBackend`` against 1 and 2 replicas."""
    import asyncio

    from ega_infer.serving.launch import add_serve_arguments
    from ega_infer.serving.ray_serve import start_ray_backend

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    requests = _requests(engine, 256)
    out = {}
    for n in replicas:
        backend = start_ray_backend(parser.parse_args(["--ray", "--replicas", str(n)]))
        try:
            async def run() -> dict:
                latencies, taken = [], iter(range(10**9))
                stop = time.monotonic() + seconds

                async def caller() -> None:
                    while time.monotonic() < stop:
                        start = time.perf_counter()
                        slates = await backend.slates([requests[next(taken) % len(requests)]],
                                                      backend.default_config, None)
                        assert slates[0].ok, slates[0].error
                        latencies.append((time.perf_counter() - start) * 1e3)

                await asyncio.gather(*(caller() for _ in range(4)))  # warm both replicas' first batches
                stop = time.monotonic() + seconds
                latencies.clear()
                begin = time.perf_counter()
                await asyncio.gather(*(caller() for _ in range(callers)))
                elapsed = time.perf_counter() - begin
                return {"requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(latencies, 50)),
                        "p99_ms": float(np.percentile(latencies, 99)), "requests": len(latencies)}

            out[f"replicas_{n}"] = asyncio.run(run())
        finally:
            backend.close()
    if len(replicas) == 2:
        out["ratio"] = out[f"replicas_{replicas[1]}"]["requests_per_s"] / out[f"replicas_{replicas[0]}"]["requests_per_s"]
    return out


def bench_http(engine, rates: list[float], seconds: float) -> dict:
    import httpx

    from ega_infer.serving.loadgen import LoadConfig, run_load
    from ega_infer.serving.schemas import request_to_json

    requests = _requests(engine, 64)
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    if pin:  # the in-process reference runs on the one core the HTTP server gets
        os.sched_setaffinity(0, {0})
    # the in-process reference at low load: one request at a time
    with Server(engine) as server:
        server.submit(requests[0]).result()
        inproc = []
        for r in requests[:40]:
            start = time.perf_counter()
            server.submit(r).result()
            inproc.append((time.perf_counter() - start) * 1e3)
    with _ServeProcess(pin) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        bodies = [{"requests": [request_to_json(r)]} for r in requests[:40]]
        http.post("/v1/slates", json=bodies[0])
        over, overhead = [], []
        for b in bodies:
            start = time.perf_counter()
            response = http.post("/v1/slates", json=b)
            wall = (time.perf_counter() - start) * 1e3
            assert response.status_code == 200
            slate = response.json()["slates"][0]
            over.append(wall)
            # paired: the client's wall time less the server's own (queue + batch) for this request
            overhead.append(wall - slate["queue_ms"] - slate["latency_ms"]["total"])
        load = run_load(LoadConfig(url=server.url, rates=tuple(rates), duration_s=seconds, concurrency=64, seed=0))
    rows = load["rows"]
    ok = [r for r in rows if r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] <= 100
          and r["statuses"].get("200", 0) > 0]
    return {"inprocess_p50_ms": float(np.percentile(inproc, 50)), "http_p50_ms": float(np.percentile(over, 50)),
            "http_overhead_p50_ms": float(np.percentile(overhead, 50)),
            "http_overhead_p99_ms": float(np.percentile(overhead, 99)),
            "rates": rows, "highest_rate_p99_le_100ms": max((r["offered_rate"] for r in ok), default=None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rates", default="5,10,20,30")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated parts: batcher,cache,http,ray,soak (ray and soak: only when named)")
    p.add_argument("--soak-rate", type=float, default=20.0, help="requests/s of the soak (half the sustainable rate)")
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--save", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engine = load_engine("tiny", "cpu", 1024, None)
    parts = set(args.only.split(",")) if args.only else {"batcher", "cache", "http"}
    rows = {}
    if "batcher" in parts:
        rows["batcher"] = bench_batcher(engine, args.callers, args.seconds)
        print(json.dumps(rows["batcher"], indent=1))
    if "cache" in parts:
        rows["cache"] = bench_cache(engine, args.callers, args.seconds)
        print(json.dumps(rows["cache"], indent=1))
    if "ray" in parts:
        rows["ray"] = bench_ray(engine, args.callers, args.seconds)
        print(json.dumps(rows["ray"], indent=1))
    if "soak" in parts:
        rows["soak"] = bench_soak(args.soak_rate, args.soak_seconds)
        print(json.dumps({k: v for k, v in rows["soak"].items() if k != "windows"}, indent=1))
    if "http" in parts and not args.skip_http:
        rows["http"] = bench_http(engine, [float(r) for r in args.rates.split(",")], args.seconds / 2)
        print(json.dumps({k: v for k, v in rows["http"].items() if k != "rates"}, indent=1))
    res = result("server", "cpu", [rows], {"preset": "tiny", "callers": args.callers, "seconds": args.seconds,
                                          "decode": str(engine.default_config)})
    if args.save:
        print(f"wrote {save_result(res)}")


if __name__ == "__main__":
    main()
