"""A batch crosses the host-device boundary twice: its inputs in one copy, its outputs in one.

Copying field by field costs a transfer each and, device to host, a synchronisation each (a
served batch has eleven output fields); at batch 1 on a GPU those fixed costs are a visible
share of the latency. Inputs are packed into one (pinned) host buffer and copied
asynchronously; outputs are packed into one device buffer of bytes and fetched once.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_device", "to_host"]


def to_device(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """int64 host arrays as device tensors of the same shapes, in one host-to-device copy."""
    if any(a.dtype != np.int64 for a in arrays):
        raise TypeError(f"to_device packs int64 arrays, got {[str(a.dtype) for a in arrays]}")
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays] or [np.zeros(0, np.int64)]))
    if device.type == "cuda":  # pinned: the copy runs asynchronously and the host goes on
        buffer = flat.pin_memory().to(device, non_blocking=True)
    else:
        buffer = flat.to(device)
    out, start = [], 0
    for a in arrays:
        out.append(buffer[start:start + a.size].view(a.shape))
        start += a.size
    return out


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors as host arrays (half-precision floats as float32), in one device-to-host copy."""
    if all(t.device.type == "cpu" for t in tensors.values()):
        return {name: _host_dtype(t.detach()).numpy() for name, t in tensors.items()}
    return fetch_packed(tensors)


def fetch_packed(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The one-copy path of :func:`to_host` (any device): every tensor's bytes in one buffer,
    widest elements first so each field starts aligned to its element size."""
    fields = {name: _host_dtype(t.detach()).contiguous() for name, t in tensors.items()}
    order = sorted(fields, key=lambda name: -fields[name].element_size())
    if not order:
        return {}
    packed = torch.cat([fields[name].reshape(-1).view(torch.uint8) for name in order])
    host = packed.cpu().numpy()
    out, start = {}, 0
    for name in order:
        t = fields[name]
        size = t.numel() * t.element_size()
        dtype = torch.empty(0, dtype=t.dtype).numpy().dtype
        out[name] = host[start:start + size].view(dtype).reshape(t.shape)
        start += size
    return {name: out[name] for name in tensors}


def _host_dtype(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
