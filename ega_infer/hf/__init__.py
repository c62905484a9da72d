"""Hugging Face causal LMs (Llama, Qwen3) as generative recommenders: their checkpoints loaded
into the engine's own modules, decoded by catalog-constrained beam search on the engine's ops.

``CausalLMEngine.from_hf(model_dir, SidLayout(offsets, sizes))`` then
``engine.beam_search(prompts, sids, num_beams)``. transformers is not needed at run time.
"""

from .config import CausalLMConfig
from .engine import BeamList, CausalLMEngine
from .model import CausalLM
from .sid_layout import SidLayout

__all__ = ["CausalLMEngine", "CausalLMConfig", "CausalLM", "SidLayout", "BeamList"]
