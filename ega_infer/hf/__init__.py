"""Hugging Face causal LMs (Llama, Qwen3) as generative recommenders: their checkpoints loaded
into the engine's own modules, decoded by catalog-constrained beam search on the engine's ops.

``CausalLMEngine.from_hf(model_dir, SidLayout(offsets, sizes))`` then
``engine.beam_search(prompts, sids, num_beams)``. transformers is not needed at run time.
Colliding semantic IDs: ``beam_search(..., return_items=True)`` maps each returned ID to its
catalog rows, ``disambiguate_sids`` appends a level that gives every item its own ID.
"""

from ..exceptions import SidCollisionWarning
from .config import CausalLMConfig
from .engine import DEFAULT_MAX_BEAMS, BeamList, CausalLMEngine, ItemBeamList
from .model import CausalLM
from .sid_layout import SidLayout, disambiguate_sids

__all__ = ["CausalLMEngine", "CausalLMConfig", "CausalLM", "SidLayout", "BeamList",
           "ItemBeamList", "DEFAULT_MAX_BEAMS", "SidCollisionWarning", "disambiguate_sids"]
