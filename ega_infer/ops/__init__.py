"""Public kernel ops. Each takes ``backend="auto" | "torch" | "triton" | "cuda"``; the torch
backend is the reference the others are tested against."""

from .beam_step import BeamStep, beam_step, beam_step_torch
from .decode_attention import decode_attention, decode_attention_torch
from .prefill_attention import prefill_attention, prefill_attention_torch
from .trie_log_softmax import trie_children, trie_log_softmax, trie_log_softmax_torch

__all__ = [
    "trie_log_softmax", "trie_log_softmax_torch", "trie_children",
    "BeamStep", "beam_step", "beam_step_torch",
    "decode_attention", "decode_attention_torch",
    "prefill_attention", "prefill_attention_torch",
]
