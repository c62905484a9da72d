"""Every error the engine raises on purpose lives here.

Each carries the name of the offending field so a caller (or a log line) can tell which input
was wrong and what was expected, without reading a traceback.
"""

from __future__ import annotations

__all__ = [
    "EgaInferError",
    "FieldError",
    "CatalogError",
    "RequestError",
    "ConfigError",
    "BackendUnavailableError",
    "CheckpointError",
    "CompiledKernelsError",
    "CatalogFileError",
    "ConfigFileError",
    "SidCollisionWarning",
    "ServingError",
    "QueueFullError",
    "ServerClosedError",
]


class EgaInferError(Exception):
    """Base class of the engine's own errors."""


class FieldError(EgaInferError, ValueError):
    """A value of a named input field is wrong.

    ``field`` is the field path (``"bids[3]"``, ``"history_poi_codes"``), ``expected`` says what
    would have been accepted.
    """

    def __init__(self, field: str, problem: str, expected: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.expected = expected
        message = f"{field}: {problem}"
        if expected:
            message += f"; expected {expected}"
        super().__init__(message)

    def __reduce__(self):  # pickles whole (Ray and process pools send errors across processes)
        return type(self), (self.field, self.problem, self.expected)


class CatalogError(FieldError):
    """The catalog (items, bids, creatives) is malformed or does not fit the model."""


class RequestError(FieldError):
    """One ad request is malformed; other requests of the same batch are unaffected."""


class ConfigError(FieldError):
    """A configuration dataclass was given an invalid value."""


class BackendUnavailableError(EgaInferError, RuntimeError):
    """A kernel backend was asked for but is not built or has no device to run on."""


class CheckpointError(EgaInferError, OSError):
    """A model or catalog file is missing, unreadable, or does not match its config."""


class CompiledKernelsError(EgaInferError, RuntimeError):
    """Ahead-of-time compiled kernels (``ega-infer compile``) failed to build, or a prepared
    directory does not match this host (Triton build, GPU architecture)."""


class CatalogFileError(CheckpointError, CatalogError):
    """A catalog file (``Catalog.load``) holds a tensor or metadata entry that is missing or
    malformed: a file problem (``CheckpointError``) about one named field (``CatalogError``:
    ``field`` is the tensor or metadata key, ``"bids[3]"``, ``"codebook_sizes"``)."""


class ConfigFileError(CheckpointError, ConfigError):
    """A ``config.json`` (``GenerativeAdModel.from_pretrained``) holds a setting that is
    missing or invalid: a file problem (``CheckpointError``) about one named field
    (``ConfigError``: ``field`` is the setting's path, ``"decoder.n_heads"``)."""


class ServingError(EgaInferError, RuntimeError):
    """The serving layer (``ega_infer.serving``) could not take a request now."""


class QueueFullError(ServingError):
    """The server's queue is full (backpressure): retry later (HTTP 429)."""


class ServerClosedError(ServingError):
    """The server was closed: it takes no more requests."""


class SidCollisionWarning(UserWarning):
    """Items of a catalog share a semantic ID: they are one trie leaf, so a beam search returns
    their ID once (``CausalLMEngine.beam_search(..., return_items=True)`` lists every item of
    it; ``ega_infer.hf.disambiguate_sids`` gives each item its own ID with an extra level)."""


def show_value(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters for an error message; safe on any input (a
    huge int, a hostile ``__repr__``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
