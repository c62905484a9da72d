"""Public kernel ops. Each takes ``backend="auto" | "torch" | "triton" | "cuda"``, validates its
inputs once and runs one backend, each in its own file: ``<op>_torch.py`` (the PyTorch
reference the others are tested against), ``kernels/<op>.py`` (Triton), ``<op>_cuda.py`` over
``csrc/<op>.cu`` (CUDA C++). ``resolve_backends`` picks every op's backend once per batch."""

from ._dispatch import OpBackends, resolve_backends
from .beam_step import BeamStep, beam_step
from .beam_step_torch import beam_step_torch, trie_children, trie_log_softmax_torch
from .decode_attention import decode_attention
from .decode_attention_torch import decode_attention_torch
from .prefill_attention import prefill_attention
from .prefill_attention_torch import prefill_attention_torch

__all__ = [
    "OpBackends", "resolve_backends",
    "BeamStep", "beam_step", "beam_step_torch", "trie_log_softmax_torch", "trie_children",
    "decode_attention", "decode_attention_torch",
    "prefill_attention", "prefill_attention_torch",
]
