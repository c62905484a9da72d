"""ega_infer: an inference engine for end-to-end generative advertising.

A request (user history, organic items) becomes an ad slate (ads, creatives, positions among
the organic items, per-click payments) through one lazy-autoregressive decoder with
trie-constrained, bid-weighted beam search, a reward model and a payment network.

Layout, top down: ``engine`` (the front end: load, swap catalogs, ``generate``) over
``request`` (validation, batching) and ``runtime`` (dynamic beam control, CUDA graphs, host-device
transfers); ``pipeline`` (everything after the encoder) over ``decoding`` (beam search, slate
rules), ``post`` (creatives, reward scoring, payments) and ``auction`` (the candidate lists, VCG,
GSP, regret); ``model`` (modules), ``catalog`` (items, trie, device arrays); ``ops`` and
``kernels`` (the kernel ops: PyTorch references, Triton, CUDA C++); ``hf`` (Hugging Face Llama /
Qwen3 causal LMs served with catalog-constrained beam search). Tools beside the runtime:
``testing`` (synthetic catalogs and requests), ``benchmark`` (``ega-infer bench``), ``compile``,
``evaluation``, ``training``, ``world``.
"""

from .catalog import Catalog, Creative, Item
from .decoding import DecodeConfig, ListScore
from .engine import Engine
from .exceptions import (
    BackendUnavailableError,
    CatalogError,
    CatalogFileError,
    CheckpointError,
    ConfigError,
    ConfigFileError,
    EgaInferError,
    FieldError,
    RequestError,
    SidCollisionWarning,
)
from .hf import CausalLMEngine, SidLayout, disambiguate_sids
from .model import GenerativeAdModel, ModelConfig
from .presets import PRESETS
from .request import Request
from .slate import Candidate, Slate, SlotResult

__version__ = "0.1.0"

__all__ = [
    "Engine", "Request", "DecodeConfig", "ListScore", "Slate", "SlotResult", "Candidate",
    "Catalog", "Item", "Creative", "GenerativeAdModel", "ModelConfig", "PRESETS",
    "CausalLMEngine", "SidLayout", "disambiguate_sids",
    "EgaInferError", "FieldError", "CatalogError", "RequestError", "ConfigError",
    "BackendUnavailableError", "CheckpointError", "CatalogFileError", "ConfigFileError",
    "SidCollisionWarning", "__version__",
]
