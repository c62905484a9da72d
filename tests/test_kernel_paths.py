"""The model's kernel paths equal its PyTorch paths: the LazyAR tail through ``decode_attention``,
the encoder on packed histories through ``prefill_attention``, and a whole engine batch decoded
with ``backend="triton"`` (the Triton interpreter on CPU CI, compiled kernels on a GPU)."""

import os

import numpy as np
import pytest
import torch

from ega_infer import DecodeConfig, Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.model.encoder import History, packed_layout

from test_beam_search import _context, _model

pytestmark = pytest.mark.interpreter


@pytest.fixture
def backend(device):
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    return "triton"


def _history(model, n, seed, device):
    g = torch.Generator().manual_seed(seed)
    s = model.config.encoder.max_history
    poi = torch.stack([torch.randint(0, v, (n, s), generator=g) for v in model.config.poi_codebook_sizes], -1)
    lengths = torch.tensor([0, s, 3, 1, 5][:n])
    zeros = torch.zeros(n, s, dtype=torch.long)
    return History(poi.to(device), torch.full((n, s, 2), -1, device=device), zeros.to(device), zeros.to(device),
                   lengths.to(device))


def test_packed_layout_lists_the_real_positions():
    index, cu = packed_layout(np.array([0, 2, 1]), width=4)
    assert index.tolist() == [0, 4, 5, 6, 8, 9]
    assert cu.tolist() == [0, 1, 4, 6] and cu.dtype == torch.int32


@torch.no_grad()
def test_packed_encoder_equals_padded_encoder(backend, device):
    model = _model().to(device)
    history = _history(model, 5, seed=1, device=device)
    ref, mask = model.encoder(history, "torch")
    got, got_mask = model.encoder(history, backend)
    assert torch.equal(mask, got_mask)
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(got[~mask] == 0)


@torch.no_grad()
@pytest.mark.parametrize("split", [0, 1])
def test_tail_step_through_decode_attention_equals_sdpa(backend, device, split):
    model = _model(split=split)
    _, _, ctx = _context(model, 3, seed=2)
    model.to(device)
    ctx = type(ctx)([k.to(device) for k in ctx.keys], [v.to(device) for v in ctx.values], ctx.mask.to(device),
                    ctx.lengths.to(device))
    decoder = model.decoder
    g = torch.Generator().manual_seed(0)
    beams = 4
    caches = {name: decoder.empty_cache(3, device, torch.float32) for name in ("torch", backend)}
    for position in range(3):  # the caches grow: own positions 1, 2, 3
        x = torch.randn(3, beams if position else 1, model.config.d_model, generator=g).to(device)
        out = {}
        for name in ("torch", backend):
            out[name], caches[name] = decoder.tail_step(x, ctx, caches[name], name)
        torch.testing.assert_close(out[backend], out["torch"], atol=1e-5, rtol=1e-5)
        if position == 0:
            parent = torch.zeros(3, beams, dtype=torch.long, device=device)
            caches = {name: c.reorder(parent) for name, c in caches.items()}


@torch.no_grad()
@pytest.mark.parametrize("mode", ["candidates", "lists"])
def test_engine_batch_with_triton_kernels_equals_the_reference(backend, device, mode):
    engine = Engine.from_pretrained("tiny", device=device)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=3))
    requests = synthetic_requests(engine.catalog, engine.config, n=3, seed=4)
    base = dict(mode=mode, beams=(4,), num_slots=3)
    if mode == "lists":
        base.update(max_ads=2, min_gap=1)
    ref = engine.generate(requests, DecodeConfig(**base, backend="torch"))
    got = engine.generate(requests, DecodeConfig(**base, backend=backend))
    for a, b in zip(ref, got):
        assert a.ok and b.ok
        assert [s.item_id for s in a.slots] == [s.item_id for s in b.slots]
        np.testing.assert_allclose([s.payment for s in a.slots], [s.payment for s in b.slots], atol=1e-4)
