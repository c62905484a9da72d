"""The harness every ``bench/bench_*.py`` runs on: shared options, timing, the check against the
reference before timing, throughput and roofline, one JSON layout under ``bench/results/``
(``ega_infer.benchmark.result``), and pytest-benchmark entries.

A kernel benchmark declares a ``Suite``: its shapes (``small``: seconds on a CPU, what ``make
bench`` and pytest run; ``full``: the sizes its goals are stated at) and ``cases(shape,
device)``, a generator of one ``Case`` per (op, provider) with its timed call, its check and the
bytes / FLOPs / items one call moves::

    SUITE = Suite("beam_step", __doc__, SHAPES, cases, entries=(("beam_step", "torch"), ...))
    test_bench = SUITE.pytest_test()      # pytest bench/bench_beam_step.py [--device cuda]
    if __name__ == "__main__":
        SUITE.main()                      # python bench/bench_beam_step.py [options]

Options (``options()``; the end-to-end and Hugging Face benchmarks take the same ones):

* ``--device``: default ``cuda`` when there is a GPU;
* ``--threads N``: torch's CPU threads, set explicitly (default 1 on a CPU; torch's own choice
  on a GPU); the machine block of every result records them;
* ``--size small|full``: default ``full`` on a GPU, ``small`` on a CPU;
* ``--shape KEY=VALUE ...`` (repeatable): one shape per use, the size's first shape with these
  keys changed (``--shape beams=64 --shape beams=512``); a value with commas is a list;
* ``--providers a,b``: only these (default: all); ``--save``: write the JSON.

Timing (``measure``): CUDA events on a GPU (``triton.testing.do_bench``: warm-up, L2 flushed
before every run, 200 ms of runs), the wall clock on a CPU (one warm-up call, at least 5 runs
and 1 s); the median with a p20/p80 band. Every case is checked before it is timed: a wrong
result stops the benchmark. A provider that cannot run here is skipped with the reason printed:
Triton on a CPU (its interpreter is not a benchmark), a backend the op refuses here
(``BackendUnavailableError``: CUDA without a GPU or without ``ega_infer._cuda``).

Roofline: on a GPU the harness measures its two ceilings once per process, a 1 GiB
device-to-device copy (bytes read + written) and an 8192^3 matrix product in the case's dtype
(float32: torch's default, without TF32, which Triton's float32 dots may use);
a row's ``memory_fraction`` and ``compute_fraction`` are bytes / copy rate and flops / product
rate over its median time, ``roofline_fraction`` the larger. A CPU has no ceiling here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ega_infer import BackendUnavailableError
from ega_infer.benchmark import device_name, result, row, save_result, summary, wall_times

__all__ = ["Case", "Suite", "options", "setup", "config_from", "measure", "rates", "ceilings", "save",
           "pytest_record", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- options -----------------------------------------------------------------------------------
def _value(text: str):
    if "," in text:
        return [_value(t) for t in text.split(",") if t]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text.lower() == "none" else text


def _shape_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, _value(value)


def options(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join((doc or "").split("\n\n")[1:]))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on a CPU, torch's choice on a GPU)")
    parser.add_argument("--size", choices=("small", "full"), default=None,
                        help="shapes (default: full on a GPU, small on a CPU)")
    parser.add_argument("--shape", type=_shape_arg, nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="a shape: the size's first with these keys changed (repeat for several)")
    parser.add_argument("--providers", default="", help="comma list (default: all)")
    parser.add_argument("--save", action="store_true", help="write JSON under bench/results/")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """The device, torch's threads set, ``args.size`` filled in; prints the machine."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA GPU")
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1: Triton providers are skipped (the interpreter is not a benchmark)")
    print(f"machine: {device_name(device)}; {args.size} shapes")
    return device


def config_from(args: argparse.Namespace, presets: dict[str, dict]) -> dict:
    """The size's preset config with every ``--shape`` key applied (for the benchmarks that run
    one configuration, not a list of shapes)."""
    config = dict(presets[args.size])
    for pairs in args.shape:
        config.update(pairs)
    return config


def _shapes(args: argparse.Namespace, shapes: dict[str, list[dict]]) -> list[dict]:
    base = shapes[args.size]
    return [dict(base[0], **dict(pairs)) for pairs in args.shape] or [dict(s) for s in base]


# -- timing and figures ------------------------------------------------------------------------
def measure(fn: Callable[[], object], device: torch.device) -> dict:
    """``median_us``, ``p20_us``, ``p80_us`` (and ``runs`` on a CPU) of one call of ``fn``."""
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
        return {"median_us": 1e3 * ms[0], "p20_us": 1e3 * ms[1], "p80_us": 1e3 * ms[2], "runs": None}
    return summary(wall_times(fn, device))


_CEILINGS: dict[tuple[str, str | None], float] = {}


def _ceiling(device: torch.device, what: str, dtype: str | None = None) -> float:
    """Bytes/s of a 1 GiB device-to-device copy, or FLOP/s of an 8192^3 product in ``dtype``,
    measured once per process with ``measure``."""
    key = (what, dtype)
    if key not in _CEILINGS:
        if what == "bytes":
            src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            _CEILINGS[key] = 2 * src.numel() / (measure(lambda: dst.copy_(src), device)["median_us"] * 1e-6)
        else:
            a = torch.randn(8192, 8192, device=device, dtype=getattr(torch, dtype))
            b = torch.randn(8192, 8192, device=device, dtype=getattr(torch, dtype))
            _CEILINGS[key] = 2 * 8192**3 / (measure(lambda: a @ b, device)["median_us"] * 1e-6)
        value = _CEILINGS[key]
        print(f"ceiling measured here: {value / 1e9:.0f} GB/s copy" if what == "bytes"
              else f"ceiling measured here: {value / 1e12:.0f} TFLOP/s {dtype} matrix product")
    return _CEILINGS[key]


def ceilings() -> dict:
    """The ceilings measured so far: ``{"bytes_per_s": ..., "flops_<dtype>": ...}``."""
    return {("bytes_per_s" if what == "bytes" else f"flops_{dtype}"): value
            for (what, dtype), value in _CEILINGS.items()}


def rates(timing: dict, device: torch.device, *, bytes: float | None = None, flops: float | None = None,
          items: float | None = None, dtype: str | None = None) -> dict:
    """``gb_per_s``, ``tflop_per_s``, ``items_per_s`` from the median, and on a GPU the
    fractions of its measured ceilings (``dtype``: the dtype the FLOPs are done in)."""
    seconds = timing["median_us"] * 1e-6
    out: dict = {}
    if bytes is not None:
        out.update(bytes=bytes, gb_per_s=bytes / seconds / 1e9)
    if flops is not None:
        out.update(flops=flops, tflop_per_s=flops / seconds / 1e12)
    if items is not None:
        out.update(items=items, items_per_s=items / seconds)
    if device.type == "cuda":
        if bytes is not None:
            out["memory_fraction"] = bytes / seconds / _ceiling(device, "bytes")
        if flops is not None and dtype is not None:
            out["compute_fraction"] = flops / seconds / _ceiling(device, "flops", dtype)
        fractions = [out[k] for k in ("memory_fraction", "compute_fraction") if k in out]
        if fractions:
            out["roofline_fraction"] = max(fractions)
    return out


def save(res: dict) -> Path:
    """Write a result under ``bench/results/`` (``ega_infer.benchmark.save_result``) with the
    ceilings this process measured; prints and returns the path."""
    if _CEILINGS:
        res["ceilings"] = ceilings()
    path = save_result(res, RESULTS_DIR)
    print(f"saved {path}")
    return path


def _shape_text(shape: dict) -> str:
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return " ".join(f"{k}={text(v)}" for k, v in shape.items())


def _row_text(r: dict) -> str:
    unit, scale = ("ms", 1e3) if r["median_us"] >= 1e4 else ("us", 1.0)
    parts = [f"{r['op']:<14} {r['provider']:<8} {_shape_text(r['shape'])}",
             f"median {r['median_us'] / scale:9.2f} {unit} "
             f"[p20 {r['p20_us'] / scale:.2f}, p80 {r['p80_us'] / scale:.2f}]"]
    for key, text in (("gb_per_s", "{:,.2f} GB/s"), ("tflop_per_s", "{:,.4f} TFLOP/s"),
                      ("items_per_s", "{:,.0f} items/s")):
        if key in r:
            parts.append(text.format(r[key]))
    if "roofline_fraction" in r:
        parts.append(f"{100 * r['roofline_fraction']:.1f}% of roofline")
    return "  ".join(parts)


# -- cases and suites --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One (op, provider) at one shape. ``run`` is the timed call; ``check`` takes its output,
    raises when it is wrong and returns figures to record (or None); ``bytes`` / ``flops`` /
    ``items`` are what one call moves, does and handles (``dtype``: the FLOPs' dtype, for the
    matrix-product ceiling)."""

    op: str
    provider: str
    run: Callable[[], object]
    check: Callable[[object], dict | None] | None = None
    bytes: float | None = None
    flops: float | None = None
    items: float | None = None
    dtype: str | None = None


def _skip_reason(case: Case, device: torch.device) -> str | None:
    if case.provider != "triton":
        return None
    if device.type != "cuda":
        return "Triton on a CPU runs only in its interpreter, which is not a benchmark"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: Triton would run in its interpreter, which is not a benchmark"
    return None


def _checked(case: Case, device: torch.device) -> dict:
    """Run the case once and check it; ``BackendUnavailableError`` propagates (a skip)."""
    out = case.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (case.check(out) if case.check is not None else None) or {}


@dataclass(frozen=True)
class Suite:
    """A kernel benchmark: ``shapes["small"]`` / ``shapes["full"]``, ``cases(shape, device)``
    yielding a ``Case`` per (op, provider) (``entries`` lists them all, for pytest)."""

    name: str
    doc: str | None
    shapes: dict[str, list[dict]]
    cases: Callable[[dict, torch.device], Iterable[Case]]
    entries: tuple[tuple[str, str], ...]

    def main(self, argv: list[str] | None = None) -> list[dict]:
        args = options(self.doc).parse_args(argv)
        device = setup(args)
        wanted = set(filter(None, args.providers.split(",")))
        rows, skipped = [], []
        for shape in _shapes(args, self.shapes):
            for case in self.cases(shape, device):
                if wanted and case.provider not in wanted:
                    continue
                reason = _skip_reason(case, device)
                try:
                    figures = {} if reason else _checked(case, device)
                except BackendUnavailableError as exc:
                    reason = str(exc)
                if reason:
                    print(f"skip {case.op} {case.provider} {_shape_text(shape)}: {reason}")
                    skipped.append({"op": case.op, "provider": case.provider, "shape": shape, "reason": reason})
                    continue
                timing = measure(case.run, device)
                rows.append(row(case.op, case.provider, shape, timing, **figures,
                                **rates(timing, device, bytes=case.bytes, flops=case.flops, items=case.items,
                                        dtype=case.dtype)))
                print(_row_text(rows[-1]))
        if args.save:
            save(dict(result(self.name, device, rows, {"size": args.size}), skipped=skipped))
        return rows

    def pytest_test(self):
        """One pytest-benchmark test per (op, provider, small shape), on ``--device``."""
        import pytest

        small = self.shapes["small"]
        params = [pytest.param(i, op, provider, id=f"{op}-{provider}-{i}")
                  for i in range(len(small)) for op, provider in self.entries]

        @pytest.mark.parametrize("shape_index, op, provider", params)
        def test_bench(benchmark, device, shape_index, op, provider):
            shape = small[shape_index]
            case = next(c for c in self.cases(shape, device) if (c.op, c.provider) == (op, provider))
            reason = _skip_reason(case, device)
            if reason:
                pytest.skip(reason)
            try:
                figures = _checked(case, device)
            except BackendUnavailableError as exc:
                pytest.skip(str(exc))
            pytest_record(benchmark, case.run, device, op=op, provider=provider, shape=shape, bytes=case.bytes,
                          flops=case.flops, items=case.items, dtype=case.dtype, **figures)

        return test_bench


def pytest_record(benchmark, fn: Callable[[], object], device: torch.device, *, op: str, provider: str,
                  shape: dict, bytes: float | None = None, flops: float | None = None, items: float | None = None,
                  dtype: str | None = None, **figures):
    """``benchmark(fn)`` with the device synchronised inside the timed call; ``extra_info``
    gets op, provider, shape, the machine (GPU name, or CPU model and threads) and the rates."""
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    out = benchmark(call)
    benchmark.extra_info.update(op=op, provider=provider, shape=shape, machine=device_name(device), **figures)
    if benchmark.stats is not None:  # None under --benchmark-disable: one untimed call
        timing = {"median_us": benchmark.stats.stats.median * 1e6}
        benchmark.extra_info.update(rates(timing, device, bytes=bytes, flops=flops, items=items, dtype=dtype))
    return out
