"""The kernel launches the engine makes for a preset: what ``ega-infer compile`` compiles.

Triton compiles one binary per *specialisation* of a kernel: its constexprs, ``num_warps`` /
``num_stages``, the dtype of every tensor, and for every integer argument whether it is 1 (then
it becomes a constant) or divisible by 16, and for every pointer whether it is 16-byte aligned
(``JITFunction.run`` -> ``native_specialize_impl``). The ``*_launch`` functions of
``ega_infer.kernels`` pick constexprs and warps from shapes; this module builds, on the ``meta``
device, the tensors the engine passes them (shapes, strides and dtypes as ``ega_infer.model``
and ``ega_infer.decoding`` build them), asks those functions for their launches, and runs
Triton's own binder on the result (``specialize``). ``tests/test_compile.py`` checks these
layouts against the tensors a real engine batch passes.

Enumerated per preset and model dtype (float32, bfloat16), for every beam schedule of the
preset's ``DecodeConfig`` (``beams`` and ``fallback_beams``):

* ``beam_step`` (``decoding/beam_search.py``): each (slot, level) position: logits
  ``[N*P, V_level]`` in the model dtype, P = 1 at the first position and the previous width
  after it, ``k`` = the width (a catalog too small to fill it serves a narrower one, compiled
  on first use), token bidding on when ``alpha != 0``, allowed masks in lists mode (a
  ``[N*P, V+1]`` bool buffer sliced to V columns, as ``SlateRules.allowed`` builds it).
* ``decode_attention`` (``LazyARDecoder.tail_step``, once per tail layer): self attention over
  each beam's own positions (no context, T = 1 .. positions) and cross attention over the
  context of C = 1 + history positions. Its tile and split-K heuristics read the batch size N,
  the GPU's SM count and C, so the enumeration covers
    - the CUDA-graph path (``runtime/graphs.py``): N in the graph buckets, C = 1 + max_history,
      context buffers contiguous;
    - the eager path: N from 1 up to the first N whose grid fills two waves of the SM count
      (past it the heuristics no longer depend on N; 15 more cover every residue mod 16 of the
      strides that scale with N), C from 2 to 1 + max_history, context keys/values as the
      strided views ``Attention.project_kv`` returns.
  When the split-K heuristic does not split at C = 1 + max_history it splits at no shorter
  context (it grows with C), so those batch sizes only need one context length per residue
  mod 16. The SM counts per architecture are in :data:`GPUS`.
* ``prefill_attention`` (``UserEncoder._forward_packed``): q ``[T, H, hd]``, k/v
  ``[T, Hkv, hd]`` views of the projections, not causal.

Anything else (other dtypes, other DecodeConfigs, layouts the model does not produce, the
Hugging Face path ``ega_infer.hf``) is compiled by Triton on first use; ``use_compiled`` logs a
warning when that happens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..ops.beam_step import log_beta

__all__ = ["Call", "Coverage", "GPUS", "calls", "launches_of", "enumerate_jobs", "specialize", "kernel_by_name"]

# Multiprocessor counts of the GPUs of each architecture (decode_attention's heuristics read it).
GPUS: dict[int, tuple[str, tuple[int, ...]]] = {
    80: ("A100", (108,)),
    86: ("A10 / A40 / RTX 3090", (72, 84, 82)),
    89: ("L4 / L40S / RTX 4090", (58, 142, 128)),
    90: ("H100 SXM / H200 / H100 PCIe", (132, 114)),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KERNEL_OPS = ("beam_step", "decode_attention", "prefill_attention")
_DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which launches to enumerate (defaults: everything the presets can launch).

    dtypes : model dtypes (``"float32"``, ``"bfloat16"``).
    ops : kernel ops, a subset of ``KERNEL_OPS``.
    batch_sizes : eager-path batch sizes for decode_attention; ``None`` sweeps them (module doc).
    context_lengths : eager-path context lengths (1 + history); ``None``: 2 .. 1 + max_history.
    graph_buckets : CUDA-graph batch buckets; ``None``: ``ega_infer.runtime.graphs.BUCKETS``.
    max_positions : decode only the first this many (slot, level) positions; ``None``: all.
    """

    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    ops: tuple[str, ...] = KERNEL_OPS
    batch_sizes: tuple[int, ...] | None = None
    context_lengths: tuple[int, ...] | None = None
    graph_buckets: tuple[int, ...] | None = None
    max_positions: int | None = None

    def __post_init__(self) -> None:
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        for op in self.ops:
            if op not in KERNEL_OPS:
                raise ValueError(f"op {op!r} is not one of {KERNEL_OPS}")
        for name in ("batch_sizes", "context_lengths", "graph_buckets"):
            values = getattr(self, name)
            if values is not None and (not values or any(not isinstance(v, int) or v < 1 for v in values)):
                raise ValueError(f"{name} must be None or positive ints, got {values!r}")
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"max_positions must be None or >= 1, got {self.max_positions}")


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a kernel op's Triton wrapper (``<op>_triton(*args, **kwargs)``) on ``meta``
    tensors; ``sm_count`` is the GPU's for decode_attention (its heuristics read it)."""

    op: str
    label: str
    args: tuple
    kwargs: dict
    sm_count: int | None = None


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


# -- beam search: positions, beam_step ------------------------------------------
def _positions(preset, max_positions: int | None) -> Iterator[tuple[int, int, int, int]]:
    """``(position, level, beams before the step, width)`` of every position of every schedule."""
    config, levels = preset.decode, preset.model.levels
    schedules = config.schedules() if hasattr(config, "schedules") else (config.beams,)
    slots = config.num_slots if config.mode == "lists" else 1
    seen = set()
    for beams in schedules:
        schedule = tuple(beams) * levels if len(beams) == 1 else tuple(beams)
        p = 1
        for position in range(slots * levels):
            if max_positions is not None and position >= max_positions:
                break
            slot, level = divmod(position, levels)
            width = schedule[level] if slot == 0 else schedule[-1]
            if (position, level, p, width) not in seen:
                seen.add((position, level, p, width))
                yield position, level, p, width
            p = width


def _beam_calls(name: str, preset, dtype: torch.dtype, coverage: Coverage) -> Iterator[Call]:
    config = preset.decode
    lists = config.mode == "lists"
    n = 1  # the batch enters no argument of these kernels, only the grid
    for position, level, p, width in _positions(preset, coverage.max_positions):
        vocab = preset.model.poi_codebook_sizes[level]
        rows = n * p
        logits = _meta(n, p, vocab, dtype=dtype).reshape(rows, -1)  # decoder.logits(...).reshape
        allowed = _meta(rows, vocab + 1, dtype=torch.bool)[:, :vocab] if lists else None
        nodes = 64  # DeviceTrie arrays: 1-D, fresh allocations
        trie = (_meta(nodes + 1, dtype=torch.int64), _meta(nodes, dtype=torch.int32), _meta(nodes))
        node = _meta(rows, dtype=torch.int64)  # node.reshape(-1)
        label = f"{name}/{str(dtype)[6:]} level {level} beams {p}->{width} vocab {vocab}"
        bid = dict(alpha=config.alpha, log_beta=log_beta(config.beta), allowed=allowed)
        yield Call("beam_step", label, (logits, _meta(n, p), node, *trie), dict(k=width, **bid))
        if config.alpha != 0:  # requests with exclusions, Clarke's counterfactual rows: per-request bids
            override = dict(override_child=_meta(n, 8, dtype=torch.int64), override_bid=_meta(n, 8),
                            allowed=_meta(rows, vocab + 1, dtype=torch.bool)[:, :vocab])
            yield Call("beam_step", f"{label} override", (logits, _meta(n, p), node, *trie),
                       dict(k=width, **{**bid, **override}))


# -- decode_attention -----------------------------------------------------------------------------
def _decode_tensors(kind: str, layout: str, n: int, p: int, t: int, c: int, heads: int,
                    kv_heads: int, hd: int, dtype: torch.dtype) -> tuple:
    """``(q, ctx_k, ctx_v, ctx_len, own_k, own_v)`` as ``LazyARDecoder.tail_step`` passes them."""
    lengths = _meta(n, dtype=torch.int64)  # mask.sum(-1)
    if kind == "self":
        # Attention.project_q on [N, P, 1, d] -> [N, P, H, 1, hd], squeezed
        q = _meta(n, p, 1, heads * hd, dtype=dtype).unflatten(-1, (heads, hd)).transpose(-2, -3).squeeze(3)
        # torch.cat([reordered cache [N, P, Hkv, T-1, hd], project_kv's [N, P, Hkv, 1, hd]], dim=3)
        new = _meta(n, p, 1, kv_heads * hd, dtype=dtype).unflatten(-1, (kv_heads, hd)).transpose(-2, -3)
        own = torch.cat([_meta(n, p, kv_heads, t - 1, hd, dtype=dtype), new], dim=3)
        no_ctx = own.new_empty(own.shape[0], own.shape[2], 0, own.shape[4])
        return q, no_ctx, no_ctx, torch.zeros_like(lengths), own, own
    # cross: project_q(cross_norm(x)) [N, H, P, hd] transposed back to [N, P, H, hd]
    q = _meta(n, p, heads * hd, dtype=dtype).unflatten(-1, (heads, hd)).transpose(-2, -3).transpose(1, 2)
    if layout == "graph":  # DecodeGraphs' static context buffers
        ctx = _meta(n, kv_heads, c, hd, dtype=dtype)
    else:  # block.context_kv(memory [N, C, d]): project_kv's view
        ctx = _meta(n, c, kv_heads * hd, dtype=dtype).unflatten(-1, (kv_heads, hd)).transpose(-2, -3)
    return q, ctx, ctx, lengths, None, None


def _int_class(value: int) -> tuple[int, bool]:
    return value % 16, value == 1


def _config_key(cfg: dict) -> tuple:
    """What of ``_choose_config``'s answer can reach the kernel's specialisation."""
    key = tuple(sorted((k, v) for k, v in cfg.items() if k not in ("programs", "split_len")))
    return key + (_int_class(cfg["split_len"]),)


def _decode_calls(name: str, preset, dtype: torch.dtype, sm_counts: tuple[int, ...],
                  coverage: Coverage) -> Iterator[Call]:
    from ..kernels.decode_attention import _choose_config

    model = preset.model
    dec = model.decoder
    if dec.split >= dec.n_layers:
        return  # no tail layers, no decode_attention
    heads, kv_heads, hd = dec.n_heads, dec.n_kv_heads, model.d_model // dec.n_heads
    block_d = max(16, 1 << (hd - 1).bit_length())
    width = 1 + model.encoder.max_history
    steps = list(_positions(preset, coverage.max_positions))  # (position, level, P, width)
    beams = sorted({p for _, _, p, _ in steps})
    if coverage.graph_buckets is not None:
        buckets = coverage.graph_buckets
    else:
        try:
            from ..runtime.graphs import BUCKETS as buckets
        except ImportError:
            buckets = _DEFAULT_BUCKETS

    @functools.cache
    def config(n: int, p: int, c: int, sms: int) -> dict:
        return _choose_config(_meta(n, p, heads, hd, dtype=dtype), kv_heads, c, block_d, None, None, sms)

    def eager_batches(p: int, c: int, sms: int) -> list[int]:
        if coverage.batch_sizes is not None:
            return list(coverage.batch_sizes)
        n = 1
        while config(n, p, c, sms)["programs"] < 2 * sms:
            n += 1
        return list(range(1, n + 16))  # and every residue mod 16 past it (strides scale with N)

    def contexts(n: int, p: int, sms: int) -> list[int]:
        if coverage.context_lengths is not None:
            return list(coverage.context_lengths)
        if config(n, p, width, sms)["num_splits"] > 1:
            return list(range(2, width + 1))
        firsts = {}  # one context length per residue mod 16 (and the longest)
        for c in range(2, width + 1):
            firsts.setdefault(c % 16, c)
        return sorted(set(firsts.values()) | {width})

    seen: set[tuple] = set()
    for sms in sm_counts:
        # self attention: no context, the beams' T own positions
        for position, _, p, _ in steps:
            t = position + 1
            for layout, batches in (("graph", buckets), ("eager", eager_batches(p, 0, sms))):
                for n in batches:
                    cfg = config(n, p, 0, sms)
                    pre = ("self", p, t, _int_class(n), _config_key(cfg))
                    if pre in seen:
                        continue
                    seen.add(pre)
                    tensors = _decode_tensors("self", layout, n, p, t, 0, heads, kv_heads, hd, dtype)
                    label = f"{name}/{str(dtype)[6:]} self-attention N={n} P={p} T={t} sm_count={sms}"
                    yield Call("decode_attention", label, tensors, {}, sms)
        # cross attention over the context
        for p in beams:
            points = [("graph", n, width) for n in buckets]
            points += [("eager", n, c) for n in eager_batches(p, width, sms) for c in contexts(n, p, sms)]
            for layout, n, c in points:
                cfg = config(n, p, c, sms)
                pre = ("cross", layout, p, _int_class(c), _int_class(n), _config_key(cfg))
                if pre in seen:
                    continue
                seen.add(pre)
                tensors = _decode_tensors("cross", layout, n, p, 0, c, heads, kv_heads, hd, dtype)
                label = f"{name}/{str(dtype)[6:]} {layout} cross-attention N={n} P={p} context={c} sm_count={sms}"
                yield Call("decode_attention", label, tensors, {}, sms)


# -- prefill_attention ----------------------------------------------------------------------------
def _prefill_calls(name: str, preset, dtype: torch.dtype) -> Iterator[Call]:
    model = preset.model
    enc = model.encoder
    heads, kv_heads, hd = enc.n_heads, enc.n_kv_heads, model.d_model // enc.n_heads
    tokens, seqs = 37, 3  # neither enters the specialisation, only the grid
    q = _meta(tokens, heads * hd, dtype=dtype).unflatten(-1, (heads, hd))  # Attention.attend_packed
    k = _meta(tokens, kv_heads * hd, dtype=dtype).unflatten(-1, (kv_heads, hd))
    v = _meta(tokens, kv_heads * hd, dtype=dtype).unflatten(-1, (kv_heads, hd))
    label = f"{name}/{str(dtype)[6:]} encoder H={heads} Hkv={kv_heads} hd={hd}"
    yield Call("prefill_attention", label, (q, k, v, _meta(seqs + 1, dtype=torch.int32)), dict(causal=False))


def calls(name: str, arch: int, coverage: Coverage) -> Iterator[Call]:
    """Every enumerated op call of preset ``name`` on a GPU of ``arch`` (module doc)."""
    from ..presets import get_preset

    preset = get_preset(name)
    sm_counts = GPUS[arch][1]
    for dtype_name in coverage.dtypes:
        dtype = DTYPES[dtype_name]
        if "beam_step" in coverage.ops:
            yield from _beam_calls(name, preset, dtype, coverage)
        if "decode_attention" in coverage.ops:
            yield from _decode_calls(name, preset, dtype, sm_counts, coverage)
        if "prefill_attention" in coverage.ops:
            yield from _prefill_calls(name, preset, dtype)


def launches_of(call: Call) -> tuple:
    """The ``Launch``es the op's Triton wrapper runs for ``call`` (its outputs allocated as the
    wrapper allocates them: new contiguous tensors on the call's device)."""
    args, kw = call.args, call.kwargs
    if call.op == "beam_step":
        from ..kernels.beam_step import beam_step_rows_launch

        logits = args[0]
        rows, slots = logits.shape[0], min(kw["k"], logits.shape[1])
        new = functools.partial(torch.empty, device=logits.device)
        outs = (new((rows, slots), dtype=torch.int64), new((rows, slots), dtype=torch.int32),
                new((rows, slots), dtype=torch.float32))
        return (beam_step_rows_launch(*args, *outs, **kw),)
    if call.op == "decode_attention":
        from ..kernels.decode_attention import decode_attention_launches

        q = args[0]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        return decode_attention_launches(*args, out, sm_count=call.sm_count, **kw)
    if call.op == "prefill_attention":
        from ..kernels.prefill_attention import prefill_attention_launch

        q = args[0]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        return (prefill_attention_launch(*args, out, **kw),)
    raise ValueError(f"unknown op {call.op!r}")


def launches(name: str, arch: int, coverage: Coverage) -> Iterator[tuple[str, Any]]:
    """``(label, Launch)`` of every enumerated call of preset ``name`` on a GPU of ``arch``."""
    for call in calls(name, arch, coverage):
        for launch in launches_of(call):
            yield call.label, launch


# -- Triton's binder ------------------------------------------------------------------------------
_BINDERS: dict[tuple[int, int], Any] = {}


def _bind(launch, arch: int) -> tuple:
    """Triton's binder on the launch: ``(backend, kwargs, bound args, specialization, options)``."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(
            f"{kernel!r} is not a compiled Triton kernel (TRITON_INTERPRET=1 is set in this process?)"
        )
    found = _BINDERS.get((id(kernel), arch))
    if found is None:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        found = _BINDERS[(id(kernel), arch)] = (backend, binder)
    backend, binder = found
    kwargs = dict(launch.meta)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug  # as JITFunction.run
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(*launch.args, **kwargs)
    return backend, kwargs, bound, specialization, options


def specialize(launch, arch: int) -> dict:
    """What ``launch.kernel[grid](*args, **meta)`` makes Triton's JIT compile on a GPU of ``arch``.

    The same steps as ``JITFunction.run`` (Triton 3.6): the binder built by
    ``create_function_from_signature`` specialises every argument, ``_pack_args`` turns that into
    the signature, constexprs, attributes and backend options that ``_do_compile`` hands to
    ``triton.compile``. Returns ``{"kernel", "module", "signature", "constexprs", "attrs",
    "options"}`` (picklable).
    """
    backend, kwargs, bound, specialization, options = _bind(launch, arch)
    return _pack(launch.kernel, backend, kwargs, bound, specialization, options)


def _pack(kernel, backend, kwargs, bound, specialization, options) -> dict:
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return {
        "kernel": kernel.__name__,
        "module": kernel.module,
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs,
        "options": dict(options.__dict__),
    }


def spec_key(spec: dict, arch: int) -> str:
    """One string per distinct compilation (kernel, arch, specialisation, options)."""
    return repr((spec["module"], spec["kernel"], arch, sorted(spec["signature"].items()),
                 sorted(spec["constexprs"].items()), sorted(spec["attrs"].items()),
                 sorted(spec["options"].items())))


def enumerate_jobs(name: str, arch: int, coverage: Coverage) -> list[dict]:
    """Distinct compilations of preset ``name`` for ``arch``: each spec plus ``arch``, ``calls``
    (how many enumerated calls use it) and ``examples`` (up to three of their labels)."""
    jobs: dict[str, dict] = {}
    by_binding: dict[tuple, dict] = {}  # the JIT's own in-memory key -> job
    for label, launch in launches(name, arch, coverage):
        backend, kwargs, bound, specialization, options = _bind(launch, arch)
        binding = (id(launch.kernel), tuple(specialization), tuple(sorted(options.items())))
        job = by_binding.get(binding)
        if job is None:
            spec = _pack(launch.kernel, backend, kwargs, bound, specialization, options)
            key = spec_key(spec, arch)
            job = jobs.get(key)
            if job is None:
                job = jobs[key] = {**spec, "arch": arch, "key": key, "calls": 0, "examples": []}
            by_binding[binding] = job
        job["calls"] += 1
        if len(job["examples"]) < 3:
            job["examples"].append(label)
    return list(jobs.values())


def kernel_by_name(module: str, name: str):
    """The ``JITFunction`` ``name`` of kernel module ``module``."""
    import importlib

    return getattr(importlib.import_module(module), name)
