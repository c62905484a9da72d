"""A batch crosses the host-device boundary twice (``runtime/transfer.py``): the packed
copies return exactly what field-by-field copies return, and on a GPU a served batch makes one
host-to-device and one device-to-host copy."""

import numpy as np
import pytest
import torch

from ega_infer import Engine
from ega_infer.testing import synthetic_catalog, synthetic_requests
from ega_infer.runtime.transfer import fetch_packed, to_device, to_host


def test_to_device_returns_each_array_with_its_shape(device):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-5, 5, (3, 7, 2)), rng.integers(0, 9, 1), np.zeros((0, 4), np.int64),
              rng.integers(0, 9, (5, 1)), np.array(7)]
    out = to_device([a.astype(np.int64) for a in arrays], device)
    assert len(out) == len(arrays)
    for a, t in zip(arrays, out):
        assert t.device.type == device.type and t.dtype == torch.int64
        np.testing.assert_array_equal(t.cpu().numpy(), a)
    assert to_device([], device) == []
    with pytest.raises(TypeError, match="int64"):
        to_device([np.zeros(3, np.int32)], device)


def test_packed_fetch_equals_field_by_field(device):
    g = torch.Generator().manual_seed(1)
    tensors = {
        "flag": torch.rand(5, 3, generator=g) > 0.5,  # 1-byte fields first in the dict, last in the buffer
        "rows": torch.randint(-1, 100, (5, 3), generator=g),
        "prob": torch.rand(5, 3, 2, generator=g),
        "half": torch.rand(4, generator=g).bfloat16(),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
        "strided": torch.rand(6, 4, generator=g)[:, ::2],
        "winner": torch.randint(0, 7, (5,), generator=g, dtype=torch.int32),
    }
    tensors = {k: v.to(device) for k, v in tensors.items()}
    got = fetch_packed(tensors)
    assert list(got) == list(tensors)
    for name, t in tensors.items():
        want = (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert got[name].flags.aligned, name
        np.testing.assert_array_equal(got[name], want)
    assert fetch_packed({}) == {}
    for name, value in to_host(tensors).items():
        np.testing.assert_array_equal(value, got[name])


@torch.no_grad()
def test_a_served_batch_makes_one_copy_each_way(device):
    if device.type != "cuda":
        pytest.skip("host-device copies exist on a GPU: needs --device=cuda")
    from torch.profiler import ProfilerActivity, profile

    engine = Engine.from_pretrained("tiny", device=device)
    engine.set_catalog(synthetic_catalog(engine.config, n_items=300, seed=1))
    requests = synthetic_requests(engine.catalog, engine.config, n=3, seed=2)
    engine.generate(requests)  # compile and capture first
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(requests)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert sum("HtoD" in n for n in names) == 1, names
    assert sum("DtoH" in n for n in names) == 1, names
