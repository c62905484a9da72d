"""No host synchronisation between the encoder and the payments: the stage ``Engine`` captures in
one CUDA graph (``runtime/graphs.py``) must not read a device value on the host, produce a
data-dependent shape or copy host data to the device, or capture fails on the GPU.

On the CPU, ``HostSyncGuard`` (a dispatch mode) records every aten call that would do so on a
GPU: scalar reads (``.item()``, ``bool()``), ``nonzero``-backed ops (boolean-mask indexing,
``masked_select``, ``unique``), ``repeat_interleave`` without ``output_size``, ``torch.tensor``
of host data, ``.tolist()`` / ``.numpy()``. Kernel bodies run by Triton's interpreter are not
watched (on a GPU they are device code). On a GPU, CUDA's own sync debug mode checks the same.
"""

import dataclasses
import os
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from ega_infer import DecodeConfig, Engine
import ega_infer.engine as engine_module
from ega_infer.testing import synthetic_catalog, synthetic_requests

aten = torch.ops.aten
_SYNCS = {
    aten._local_scalar_dense.default: "reads a device value on the host (.item(), bool(), int())",
    aten.nonzero.default: "has a data-dependent shape",
    aten.masked_select.default: "has a data-dependent shape",
    aten._unique2.default: "has a data-dependent shape",
    aten.unique_consecutive.default: "has a data-dependent shape",
    aten.unique_dim.default: "has a data-dependent shape",
    aten.bincount.default: "has a data-dependent shape",
    aten.equal.default: "returns a host bool",
    aten.lift_fresh.default: "copies host data to the device (torch.tensor)",
}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class HostSyncGuard(TorchDispatchMode):
    """Records (op, why, where) for each call that would synchronise a GPU with the host."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def _record(self, op: str, why: str) -> None:
        frames = [f for f in traceback.extract_stack() if "/ega_infer/" in f.filename or "/kernels/" in f.filename]
        where = f"{frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else "?"
        self.found.append((op, why, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _SYNCS.get(func)
        if func in _INDEX_OPS and any(t is not None and t.dtype == torch.bool for t in args[1]):
            why = "indexes with a boolean mask (nonzero)"
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            why = "repeat_interleave without output_size"
        if why:
            self._record(str(func), why)
        return func(*args, **kwargs)

    def __enter__(self):
        self._saved = torch.Tensor.tolist, torch.Tensor.numpy
        guard = self

        def host_copy(name, method):
            def wrapped(tensor, *a, **k):
                guard._record(f"Tensor.{name}", "copies device data to the host")
                return method(tensor, *a, **k)
            return wrapped

        torch.Tensor.tolist = host_copy("tolist", self._saved[0])
        torch.Tensor.numpy = host_copy("numpy", self._saved[1])
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._saved
        return super().__exit__(*exc)


def test_the_guard_sees_each_kind_of_sync():
    x = torch.arange(6.0)
    with HostSyncGuard() as guard:
        x.sum().item()
        x[x > 2]
        torch.repeat_interleave(torch.tensor([1, 2]))
        x.tolist()
        torch.repeat_interleave(x, torch.full((6,), 2), output_size=12)  # sized: no sync
        x[torch.tensor([0, 2])]  # integer gather: no sync (torch.tensor itself is recorded)
    whys = [why for _, why, _ in guard.found]
    assert whys == [
        "reads a device value on the host (.item(), bool(), int())", "indexes with a boolean mask (nonzero)",
        "copies host data to the device (torch.tensor)", "repeat_interleave without output_size",
        "copies device data to the host", "copies host data to the device (torch.tensor)",
    ], guard.found
    assert guard.found[0][2] == "?"  # no engine frame on the stack


@pytest.fixture
def kernel_backend(device, monkeypatch):
    """The captured path's backend; under the interpreter, kernel bodies run unwatched."""
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
        from triton.runtime import interpreter

        run = interpreter.GridExecutor.__call__

        def unwatched(self, *args, **kwargs):
            with _disable_current_modes():
                return run(self, *args, **kwargs)

        monkeypatch.setattr(interpreter.GridExecutor, "__call__", unwatched)
    return "triton" if device.type == "cpu" else "auto"


@torch.no_grad()
@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["lists", "candidates"])
@pytest.mark.parametrize("pricing", ["network", "clarke"])
def test_decode_to_payments_never_synchronises(device, kernel_backend, mode, pricing, monkeypatch):
    """The whole captured stage (decode loop, creatives, reward selection, payments; with Clarke
    pricing the counterfactual decodes, with requests that exclude items) on the kernel
    backend: no op that would wait for the GPU."""
    engine = Engine.from_pretrained("tiny", device=device, cuda_graphs=False)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=3))
    config = dataclasses.replace(engine.default_config, backend=kernel_backend, pricing=pricing)
    if mode == "candidates":
        config = dataclasses.replace(config, mode="candidates", max_ads=None, min_gap=0, beams=(4, 8, 8))
    guard = HostSyncGuard()
    stage = engine_module.decode_to_payments

    def watched(*args, **kwargs):
        with guard:
            return stage(*args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_to_payments", watched)
    requests = synthetic_requests(engine.catalog, engine.config, n=3, seed=4)
    if pricing == "clarke":
        ads = engine.catalog.item_ids[engine.catalog.is_ad]
        requests = [dataclasses.replace(r, exclude_items=list(ads[i: i + 2 + i])) for i, r in enumerate(requests)]
    slates = engine.generate(requests, config)
    assert all(s.ok for s in slates) and any(s.slots for s in slates)
    assert guard.found == []


@torch.no_grad()
@pytest.mark.interpreter
def test_encoder_never_synchronises(device, kernel_backend):
    """The eager encoder on packed histories (prefill kernel per layer): the host keeps
    launching while the GPU works, so a batch's only waits are the transfers."""
    from ega_infer.request import collate, prepare_request

    engine = Engine.from_pretrained("tiny", device=device, cuda_graphs=False)
    catalog = synthetic_catalog(engine.config, n_items=300, seed=3)
    prepared = [prepare_request(r, engine.config, catalog, True)
                for r in synthetic_requests(catalog, engine.config, n=3, seed=4)]
    history, _, _ = collate(prepared, device, engine.config.encoder.max_history)
    with HostSyncGuard() as guard:
        engine.model.encoder(history, kernel_backend)
    assert guard.found == []


@torch.no_grad()
@pytest.mark.parametrize("mode", ["candidates", "lists"])
def test_decode_loop_never_synchronises_with_the_host(device, mode):
    """Every level, the slate rules and the creative choice run with fixed shapes: CUDA's sync
    debug mode raises on any device-to-host wait inside the decode and creative stages."""
    if device.type != "cuda":
        pytest.skip("host synchronisation is a CUDA notion: needs --device=cuda and a GPU")
    from ega_infer.decoding import beam_search
    from ega_infer.ops import resolve_backends
    from ega_infer.post import choose_creatives
    from ega_infer.request import collate, prepare_request

    engine = Engine.from_pretrained("tiny", device=device)
    catalog = synthetic_catalog(engine.config, n_items=300, seed=3)
    engine.set_catalog(catalog)
    config = DecodeConfig(mode=mode, beams=(4, 8, 8), num_slots=3, **({"max_ads": 2} if mode == "lists" else {}))
    prepared = [prepare_request(r, engine.config, catalog, mode == "lists")
                for r in synthetic_requests(catalog, engine.config, n=3, seed=4)]
    history, organic, _ = collate(prepared, device, engine.config.encoder.max_history)
    cfg = engine.config
    backends = resolve_backends("auto", device, head_dim=cfg.d_model // cfg.decoder.n_heads,
                                prefill_head_dim=cfg.d_model // cfg.encoder.n_heads,
                                vocab=max(cfg.poi_codebook_sizes), beams=8)
    memory, mask = engine.model.encoder(history, backends.prefill_attention)
    ctx = engine.model.decoder.context(memory, mask)
    arrays = catalog.on_device(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lists = beam_search(engine.model.decoder, ctx, arrays, config.spec(), backends, organic)
        choose_creatives(engine.model, memory, mask, lists, arrays)
    finally:
        torch.cuda.set_sync_debug_mode("default")
