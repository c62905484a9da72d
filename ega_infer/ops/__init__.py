"""Public kernel ops. Each takes ``backend="auto" | "torch" | "triton" | "cuda"``; the torch
backend is the reference the others are tested against."""

from .trie_log_softmax import trie_children, trie_log_softmax, trie_log_softmax_torch

__all__ = ["trie_log_softmax", "trie_log_softmax_torch", "trie_children"]
