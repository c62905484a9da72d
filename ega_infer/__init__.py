"""ega_infer: an inference engine for end-to-end generative advertising.

A request (user history, organic items) becomes an ad slate (ads, creatives, positions among
the organic items, per-click payments) through one lazy-autoregressive decoder with
trie-constrained, bid-weighted beam search, a reward model and a payment network.

Layout: ``catalog`` (items, trie), ``model`` (modules), ``decoding`` (beam search),
``post`` (creatives, list selection, payments), ``engine`` (serving front end), ``ops`` and
``kernels`` (native kernels with their PyTorch references), ``hf`` (Hugging Face Llama / Qwen3
causal LMs served with catalog-constrained beam search).
"""

from .catalog import Catalog, Creative, Item
from .decoding import DecodeConfig, ListScore
from .engine import Engine
from .exceptions import (
    BackendUnavailableError,
    CatalogError,
    CheckpointError,
    ConfigError,
    EgaInferError,
    FieldError,
    RequestError,
)
from .hf import CausalLMEngine, SidLayout
from .model import GenerativeAdModel, ModelConfig
from .presets import PRESETS
from .request import Request
from .slate import Candidate, Slate, SlotResult

__version__ = "0.1.0"

__all__ = [
    "Engine", "Request", "DecodeConfig", "ListScore", "Slate", "SlotResult", "Candidate",
    "Catalog", "Item", "Creative", "GenerativeAdModel", "ModelConfig", "PRESETS",
    "CausalLMEngine", "SidLayout",
    "EgaInferError", "FieldError", "CatalogError", "RequestError", "ConfigError",
    "BackendUnavailableError", "CheckpointError", "__version__",
]
