"""An open-loop HTTP load generator for ``POST /v1/slates`` (``ega-infer loadtest``).

Requests arrive as a Poisson process at each offered rate of ``LoadConfig.rates``, whatever the
server answers: a closed-loop client waits for each reply before sending the next, so it slows
down with the server and hides the queueing delay a real ad stream would see. An arrival that
finds ``concurrency`` calls in flight is counted as ``dropped``, never queued on the client, and
a 429's Retry-After is counted, not obeyed: backing off would close the loop again.

* ``LoadConfig``: what to send, where, how fast and for how long; refuses a non-loopback URL
  unless ``allow_remote``.
* ``synthetic_payloads``: request JSON from the synthetic world's held-out users, a
  ``repeat_fraction`` of them from a small pool of repeated users (so a result cache can hit).
* ``run_load``: one run per rate; ``plot_load``: p50/p99 latency and achieved QPS per rate.
* ``add_loadtest_arguments`` / ``run_loadtest``: the command line.

Every count is in requests (a body of ``requests_per_body`` counts that many). Per rate,
``arrivals == sent + dropped`` and ``sent == completed + transport_error``; ``statuses`` splits
all arrivals: ``200`` (an OK slate), ``slate_error`` (a 200 whose slate carried an error),
``429``, ``504``, ``4xx`` and ``5xx`` (the others), ``transport_error`` (no HTTP answer within
``timeout_s``) and ``dropped``. Latency is the client's wall time per 200 call.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import ipaddress
import itertools
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..exceptions import ConfigError, show_value

__all__ = ["LoadConfig", "synthetic_payloads", "run_load", "plot_load", "add_loadtest_arguments", "run_loadtest"]

STATUSES = ("200", "slate_error", "429", "504", "4xx", "5xx", "transport_error", "dropped")
_HISTORY_KEYS = ("history_poi_codes", "history_creative_codes", "history_actions", "history_time_buckets")


def _number(name: str, value: object, low: float, high: float, *, integer: bool = False,
            open_low: bool = False) -> None:
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    if not ok:
        expected = f"{'an int' if integer else 'a number'} in {'(' if open_low else '['}{low:g}, {high:g}]"
        raise ConfigError(name, f"is {show_value(value)}", expected)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test: ``duration_s`` of Poisson arrivals at each of ``rates`` requests/s.

    ``concurrency`` caps the HTTP calls in flight, ``deadline_ms`` is sent in every body and
    sets goodput (OK within the deadline), ``max_requests`` bounds the arrivals per rate and
    ``timeout_s`` each call. ``seed`` seeds the arrivals and the default payloads' synthetic
    world (the server's catalog comes from the same world). ``url`` must be loopback unless
    ``allow_remote``.
    """

    url: str
    rates: tuple[float, ...]
    duration_s: float = 10.0
    concurrency: int = 64
    deadline_ms: float | None = None
    requests_per_body: int = 1
    repeat_fraction: float = 0.0
    repeat_pool: int = 8
    seed: int = 0
    timeout_s: float = 30.0
    max_requests: int = 100_000
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.allow_remote, bool):
            raise ConfigError("allow_remote", f"is {show_value(self.allow_remote)}", "True or False")
        _check_url(self.url, self.allow_remote)
        if isinstance(self.rates, (str, bytes)) or not isinstance(self.rates, Iterable):
            raise ConfigError("rates", f"is {show_value(self.rates)}", "a sequence of rates")
        rates = tuple(self.rates)
        if not 1 <= len(rates) <= 64:
            raise ConfigError("rates", f"has {len(rates)} rates", "1 to 64")
        for i, rate in enumerate(rates):
            _number(f"rates[{i}]", rate, 0, 10_000, open_low=True)
        object.__setattr__(self, "rates", tuple(float(r) for r in rates))
        _number("duration_s", self.duration_s, 0, 3600, open_low=True)
        _number("concurrency", self.concurrency, 1, 4096, integer=True)
        if self.deadline_ms is not None:
            _number("deadline_ms", self.deadline_ms, 0, 3_600_000, open_low=True)
        _number("requests_per_body", self.requests_per_body, 1, 256, integer=True)
        _number("repeat_fraction", self.repeat_fraction, 0, 1)
        _number("repeat_pool", self.repeat_pool, 1, 4096, integer=True)
        _number("seed", self.seed, 0, 2**63 - 1, integer=True)
        _number("timeout_s", self.timeout_s, 0, 3600, open_low=True)
        _number("max_requests", self.max_requests, 1, 10_000_000, integer=True)


def _check_url(url: object, allow_remote: bool) -> None:
    if not isinstance(url, str):
        raise ConfigError("url", f"is {show_value(url)}", "a base URL such as http://127.0.0.1:8000")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError as exc:
        raise ConfigError("url", f"{show_value(url)} does not parse ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("url", f"is {show_value(url)}", "an http:// or https:// URL with a host")
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 or ::1
    except ValueError:
        loopback = False
    if not loopback:
        # Load tests are aimed at one's own server; pointing one elsewhere should be deliberate.
        raise ConfigError("url", f"host {show_value(host)} is not loopback",
                          "localhost, 127.0.0.0/8 or ::1 (or allow_remote=True / --allow-remote)")


# -- payloads ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _world_requests(model: str, seed: int) -> tuple[tuple[str, ...], int]:
    """The held-out users' request JSON (as text, so no caller can change the cached copy) and
    the world's ``min_history``; cached because building the world takes seconds."""
    from ..presets import get_preset
    from ..world import AdWorld, WorldConfig
    from .schemas import request_to_json

    world = AdWorld(WorldConfig(seed=seed), get_preset(model).model)
    users = tuple(json.dumps(request_to_json(world.request(int(u)))) for u in world.users("test"))
    return users, world.config.min_history


def _payload_stream(model: str = "tiny", seed: int = 0, repeat_fraction: float = 0.0,
                    repeat_pool: int = 8) -> Iterator[dict]:
    """Request JSON objects without end, each with its own request_id.

    Distinct contents are the held-out users, then the same users with their oldest events cut
    one more at a time (down to the world's ``min_history``), so a result cache sees a new key
    for each non-repeated request far beyond the few hundred users. The repeated pool is the
    first ``repeat_pool`` contents. The world is built here, before the first item is asked for.
    """
    users, min_history = _world_requests(model, seed)
    spare = [max(len(json.loads(u)["history_poi_codes"]) - min_history, 0) for u in users]
    cuts = [(u, cut) for cut in range(max(spare) + 1) for u in range(len(users)) if cut <= spare[u]]

    def content(j: int) -> dict:
        u, cut = cuts[j % len(cuts)]
        return {k: (v[cut:] if k in _HISTORY_KEYS and v is not None else v) for k, v in json.loads(users[u]).items()}

    def stream() -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        fresh = itertools.count(repeat_pool)
        for i in itertools.count():
            if rng.random() < repeat_fraction:
                k = int(rng.integers(repeat_pool))
                yield {**content(k), "request_id": f"lg-{i}-r{k}"}
            else:
                yield {**content(next(fresh)), "request_id": f"lg-{i}"}

    return stream()


def synthetic_payloads(n: int, model: str = "tiny", seed: int = 0, repeat_fraction: float = 0.0,
                       repeat_pool: int = 8) -> list[dict]:
    """``n`` request JSON objects of preset ``model``'s synthetic world (``AdWorld(seed)``),
    with distinct request_ids; a ``repeat_fraction`` of them reuse one of ``repeat_pool``
    contents (the same user, only request_id differs)."""
    _number("n", n, 0, 10_000_000, integer=True)
    _number("repeat_fraction", repeat_fraction, 0, 1)
    _number("repeat_pool", repeat_pool, 1, 4096, integer=True)
    return list(itertools.islice(_payload_stream(model, seed, repeat_fraction, repeat_pool), n))


# -- the run -----------------------------------------------------------------------------------
@dataclass
class _Tally:
    statuses: Counter = dataclasses.field(default_factory=lambda: Counter({s: 0 for s in STATUSES}))
    latencies: list = dataclasses.field(default_factory=list)  # (ms, OK slates) per 200 call
    queue_ms: list = dataclasses.field(default_factory=list)
    schedules: Counter = dataclasses.field(default_factory=Counter)
    cache_hits: int = 0

    def response(self, status: int, n: int, ms: float, data: object) -> None:
        if status != 200:
            key = str(status) if status in (429, 504) else "4xx" if 400 <= status < 500 else "5xx"
            self.statuses[key] += n
            return
        slates = data.get("slates") if isinstance(data, dict) else None
        slates = [s for s in slates if isinstance(s, dict)][:n] if isinstance(slates, list) else []
        ok = 0
        for slate in slates:
            if slate.get("error") is None:
                ok += 1
            self.cache_hits += slate.get("cache_hit") is True
            if isinstance(slate.get("beam_schedule"), list):
                self.schedules["-".join(str(b) for b in slate["beam_schedule"])] += 1
            if isinstance(slate.get("queue_ms"), (int, float)):
                self.queue_ms.append(float(slate["queue_ms"]))
        self.statuses["200"] += ok
        self.statuses["slate_error"] += n - ok  # an error slate, or one the answer lacks
        self.latencies.append((ms, ok))


async def _call(client, url: str, body: bytes, n: int, timeout_s: float, tally: _Tally) -> None:
    import httpx

    start = time.perf_counter()
    try:
        # httpx's timeout is per phase (connect, read, ...); this bounds the whole call.
        response = await asyncio.wait_for(client.post(url, content=body), timeout_s)
        ms = (time.perf_counter() - start) * 1e3
        try:
            data = response.json() if response.status_code == 200 else None
        except ValueError:
            data = None
        tally.response(response.status_code, n, ms, data)
    except (httpx.HTTPError, OSError, asyncio.TimeoutError):
        tally.statuses["transport_error"] += n


async def _run_rate(client, config: LoadConfig, rate: float, rng: np.random.Generator,
                    payloads: Iterator[dict]) -> dict:
    url = config.url.rstrip("/") + "/v1/slates"
    tally, in_flight = _Tally(), {}
    arrivals = 0
    lag = 0.0
    start = time.perf_counter()
    t = 0.0
    while arrivals < config.max_requests:
        # Arrival times come from the seeded gaps alone, never from the server's answers.
        t += rng.exponential(config.requests_per_body / rate)
        if t >= config.duration_s:
            break
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, time.perf_counter() - start - t)
        n = min(config.requests_per_body, config.max_requests - arrivals)
        arrivals += n
        if len(in_flight) >= config.concurrency:
            tally.statuses["dropped"] += n
            continue
        body = {"requests": [next(payloads) for _ in range(n)]}
        if config.deadline_ms is not None:
            body["deadline_ms"] = config.deadline_ms
        task = asyncio.create_task(_call(client, url, json.dumps(body).encode(), n, config.timeout_s, tally))
        in_flight[task] = n
        task.add_done_callback(lambda done: in_flight.pop(done, None))
    if in_flight:
        await asyncio.wait(list(in_flight), timeout=config.timeout_s + 1)
    for task, n in list(in_flight.items()):  # still running past its own timeout: give up on it
        task.cancel()
        tally.statuses["transport_error"] += n
    # The offered window is the whole duration unless max_requests ended it early.
    elapsed = max(time.perf_counter() - start, config.duration_s if t >= config.duration_s else 0.0)
    return _row(config, rate, tally, arrivals, elapsed, lag)


def _row(config: LoadConfig, rate: float, tally: _Tally, arrivals: int, elapsed: float, lag: float) -> dict:
    s = tally.statuses
    ms = np.array([m for m, _ in tally.latencies])
    ok = s["200"]
    deadline = math.inf if config.deadline_ms is None else config.deadline_ms
    good = sum(k for m, k in tally.latencies if m <= deadline)
    transport = s["transport_error"]
    sent = arrivals - s["dropped"]

    def pct(values, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    return {
        "offered_rate": rate, "duration_s": config.duration_s, "elapsed_s": round(elapsed, 3),
        "arrivals": arrivals, "sent": sent, "completed": sent - transport, "ok": ok,
        "achieved_qps": round(ok / elapsed, 3),
        "latency_ms": {"p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
                       "mean": round(float(ms.mean()), 3) if len(ms) else None,
                       "max": round(float(ms.max()), 3) if len(ms) else None},
        "good": good, "goodput_qps": round(good / elapsed, 3), "goodput_fraction": round(good / max(arrivals, 1), 4),
        "statuses": dict(s), "cache_hits": tally.cache_hits, "beam_schedules": dict(tally.schedules),
        "queue_ms": {"p50": pct(tally.queue_ms, 50), "p99": pct(tally.queue_ms, 99)},
        "send_lag_ms_max": round(lag * 1e3, 3),  # how far the sender fell behind its schedule
    }


async def _run_all(config: LoadConfig, payloads: Iterator[dict]) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    # trust_env=False: a proxy from the environment would measure the proxy, not the server.
    async with httpx.AsyncClient(limits=limits, timeout=config.timeout_s, trust_env=False,
                                 headers={"content-type": "application/json"}) as client:
        return [await _run_rate(client, config, rate, np.random.default_rng((config.seed, i)), payloads)
                for i, rate in enumerate(config.rates)]


def run_load(config: LoadConfig, payloads: list[dict] | None = None) -> dict:
    """Run ``config`` against its server, one rate after the other; returns the report
    ``{"url", "config", "rows": [one per rate], "machine", "started"}``.

    ``payloads`` (request JSON objects) are sent in turn, cycled when the run needs more;
    by default they are ``synthetic_payloads`` of the tiny preset (``config.seed``,
    ``repeat_fraction``, ``repeat_pool``). One stream runs through all rates, so a later rate
    does not resend what an earlier one warmed a result cache with. Uses ``asyncio.run``:
    call it outside a running event loop.
    """
    if payloads is None:
        stream = _payload_stream("tiny", config.seed, config.repeat_fraction, config.repeat_pool)
    elif not payloads or not all(isinstance(p, dict) for p in payloads):
        raise ConfigError("payloads", "is empty or holds a non-object", "a non-empty list of request JSON objects")
    else:
        stream = itertools.cycle(payloads)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = asyncio.run(_run_all(config, stream))
    return {"url": config.url, "config": dataclasses.asdict(config), "rows": rows,
            "machine": {"host": platform.node(), "platform": platform.platform(),
                        "python": platform.python_version(), "cpus": os.cpu_count()},
            "started": started}


def plot_load(report: dict, path: str | Path) -> bool:
    """p50 and p99 latency against offered rate, achieved QPS on a second axis, as a PNG;
    False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(report["rows"], key=lambda r: r["offered_rate"])
    x = [r["offered_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for q, style in (("p50", "o-"), ("p99", "x--")):
        points = [(r["offered_rate"], r["latency_ms"][q]) for r in rows if r["latency_ms"][q] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"latency {q}")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    qps = ax.twinx()
    qps.plot(x, [r["achieved_qps"] for r in rows], "s-", color="tab:green", label="achieved QPS")
    qps.plot(x, x, ":", color="gray", label="offered")
    qps.set_ylabel("achieved (requests/s)")
    lines = ax.get_legend_handles_labels()[0] + qps.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    ax.set_title(f"{report['url']} ({report['started']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- the command line --------------------------------------------------------------------------
def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """``ega-infer loadtest``'s options."""
    parser.add_argument("--url", required=True, help="the server's base URL (http://127.0.0.1:8000)")
    parser.add_argument("--rate", default="10", help="offered requests/s, comma-separated: one run per rate")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="most HTTP calls in flight; arrivals beyond are dropped")
    parser.add_argument("--deadline-ms", type=float, default=None,
                        help="sent with every body; goodput counts OK answers within it")
    parser.add_argument("--requests-per-body", type=int, default=1)
    parser.add_argument("--repeat-fraction", type=float, default=0.0,
                        help="fraction of requests from a few repeated users")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the arrivals and of the synthetic world (as the server's)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/loadtest_<time>.json)")
    parser.add_argument("--plot", default=None, help="PNG path (default beside the JSON)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a URL that is not loopback")


def run_loadtest(args: argparse.Namespace) -> int:
    """Run ``ega-infer loadtest``: write the report's JSON and plot, print a table; 2 on a bad option."""
    try:
        try:
            rates = tuple(float(r) for r in args.rate.split(","))
        except ValueError:
            raise ConfigError("--rate", f"is {args.rate!r}", "comma-separated numbers") from None
        config = LoadConfig(url=args.url, rates=rates, duration_s=args.duration, concurrency=args.concurrency,
                            deadline_ms=args.deadline_ms, requests_per_body=args.requests_per_body,
                            repeat_fraction=args.repeat_fraction, seed=args.seed, allow_remote=args.allow_remote)
    except ConfigError as exc:
        print(f"ega-infer loadtest: {exc}", file=sys.stderr)
        return 2
    report = run_load(config)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else Path("bench") / "results" / f"loadtest_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    drawn = plot_load(report, plot)
    print(_table(report["rows"]))
    print(f"wrote {out}" + (f" and {plot}" if drawn else " (no plot: matplotlib is not installed)"))
    return 0


def _table(rows: list[dict]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'rate':>8} {'qps':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'goodput':>14} "
             f"{'429':>6} {'504':>6} {'dropped':>7} {'errors':>6} {'cache':>6}"]
    for r in rows:
        s, lat = r["statuses"], r["latency_ms"]
        errors = s["4xx"] + s["5xx"] + s["transport_error"] + s["slate_error"]
        goodput = f"{r['goodput_qps']:.1f} ({r['goodput_fraction']:.0%})"
        lines.append(f"{r['offered_rate']:>8g} {r['achieved_qps']:>8.1f} {ms(lat['p50']):>8} {ms(lat['p90']):>8} "
                     f"{ms(lat['p99']):>8} {goodput:>14} {s['429']:>6} {s['504']:>6} {s['dropped']:>7} "
                     f"{errors:>6} {r['cache_hits']:>6}")
    return "\n".join(lines)
