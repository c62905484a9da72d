"""FP8 weight matrix products: the quantised layer stays close to the full-precision one, the
engine serves valid slates with it, and on an FP8 GPU the tensor-core product equals the
dequantised one."""

import pytest
import torch
from torch import nn

from ega_infer import Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.model.fp8 import FP8Linear, fp8_matmul_supported, quantize_fp8


@pytest.mark.parametrize("shape", [(1, 16, 16), (7, 64, 48), (3, 5, 33)])
def test_fp8_linear_is_within_the_format_error(shape):
    n, d_in, d_out = shape
    linear = nn.Linear(d_in, d_out, bias=False)
    fp8 = FP8Linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.scale.shape == (d_out,)
    x = torch.randn(n, d_in)
    want = linear(x)
    got = fp8(x)
    # e4m3 keeps 3 mantissa bits: each weight within 2**-4 relative, so the product within that of |x| @ |W|
    bound = (x.abs() @ linear.weight.abs().t()) * 2.0**-4 + 1e-6
    assert torch.all((got - want).abs() <= bound)


def test_quantize_fp8_replaces_the_sequence_model_layers_only():
    engine = Engine.from_pretrained("tiny")
    replaced = quantize_fp8(engine.model)
    assert replaced > 0
    assert all(not isinstance(m, FP8Linear) for m in engine.model.reward.modules())
    assert all(not isinstance(m, FP8Linear) for m in engine.model.payment.modules())
    assert any(isinstance(m, FP8Linear) for m in engine.model.decoder.modules())


def test_fp8_engine_serves_valid_slates():
    engine = Engine.from_pretrained("tiny", fp8=True)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=1))
    slates = engine.generate(synthetic_requests(engine.catalog, engine.config, n=3, seed=2))
    for slate in slates:
        assert slate.ok and len(slate.slots) == engine.default_config.num_slots
        assert all(0 <= s.payment <= s.bid for s in slate.slots)


def test_tensor_core_product_equals_the_dequantised_one(device):
    if not fp8_matmul_supported(device):
        pytest.skip("needs --device=cuda on a GPU with FP8 tensor cores (compute capability >= 8.9)")
    linear = nn.Linear(128, 256, bias=False).to(device)
    fp8 = FP8Linear(linear).to(device)
    x = torch.randn(37, 128, device=device, dtype=torch.bfloat16)
    want = x.float() @ fp8.dequantized(torch.float32).t()
    # activations are quantised per row too: allow the e4m3 error of x on top
    bound = (x.float().abs() @ fp8.dequantized(torch.float32).abs().t()) * 2.0**-3 + 1e-3
    assert torch.all((fp8(x).float() - want).abs() <= bound)
