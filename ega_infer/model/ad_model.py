"""The generative ad model: encoder, LazyAR decoder, creative head, reward model, payment
network, saved as ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..exceptions import CheckpointError, ConfigError, ConfigFileError, show_value
from .config import ModelConfig
from .creative import CreativeHead
from .decoder import LazyARDecoder
from .encoder import UserEncoder
from .payment import PaymentNetwork
from .reward import RewardModel

__all__ = ["GenerativeAdModel"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # a config.json is under 1 KiB; a larger one is not read
# weight dtypes from_pretrained reads (safetensors' names); one for every tensor of a file
WEIGHT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
LOAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class GenerativeAdModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise ConfigError("config", f"is {show_value(config)} (a {type(config).__name__})", "a ModelConfig")
        super().__init__()
        self.config = config
        self.encoder = UserEncoder(config)
        self.decoder = LazyARDecoder(config)
        self.creative = CreativeHead(config)
        self.reward = RewardModel(config)
        self.payment = PaymentNetwork(config)

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> GenerativeAdModel:
        """Fresh weights, deterministic for ``seed`` (an integer in ``[0, 2**64)``, independent
        of the global RNG)."""
        if not isinstance(config, ModelConfig):
            raise ConfigError("config", f"is {show_value(config)} (a {type(config).__name__})", "a ModelConfig")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise ConfigError("seed", f"is {show_value(seed)} (a {type(seed).__name__})", "an integer in [0, 2**64)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the directory ``path`` (made if
        missing). Raises CheckpointError when they cannot be written."""
        path = _dir_path(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / CONFIG_FILE).write_text(self.config.to_json())
            save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        except Exception as exc:  # noqa: BLE001 - a file in the way, no permission, a full disk
            raise CheckpointError(f"{path}: cannot write the model ({exc})") from None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> GenerativeAdModel:
        """The model ``save_pretrained`` wrote to the directory ``path``, on ``device`` (cpu, or
        a cuda device this host has), cast to ``dtype`` (float32/float16/bfloat16/float64)
        when given.

        ``config.json`` (at most ``MAX_CONFIG_BYTES``) is read by ``ModelConfig.from_json``;
        ``model.safetensors`` must hold exactly the tensors of the model it describes, with
        their shapes, all in one of the dtypes float32, float16, bfloat16, and finite. Names,
        shapes and dtypes are checked from the file's header, before any weight is read, and
        the model is first built on the meta device: nothing is allocated for a config the
        file does not back.

        Raises
        ------
        CheckpointError: a file is missing, unreadable or not what save_pretrained writes; the
        message names the file and the tensor.
        ConfigFileError (a CheckpointError and a ConfigError): a setting of config.json is
        missing or invalid; ``field`` names it (``"decoder.n_heads"``).
        ConfigError: ``device`` or ``dtype`` is not one of the above.
        """
        path = _dir_path(path)
        device = _device(device)
        if dtype is not None and dtype not in LOAD_DTYPES:
            raise ConfigError("dtype", f"is {show_value(dtype)}", f"None or one of {list(LOAD_DTYPES)}")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise CheckpointError(f"{path}: missing {name} (expected a directory saved by save_pretrained)")
        config = _read_config(path / CONFIG_FILE)
        with torch.device("meta"):
            model = cls(config)
        weights = path / WEIGHTS_FILE
        _check_weights(weights, model.state_dict())
        try:
            state = load_file(str(weights), device=str(device))
        except Exception as exc:  # noqa: BLE001 - whatever safetensors says of a file it cannot read
            raise CheckpointError(f"{weights}: cannot read the weights ({exc})") from None
        for name, tensor in state.items():
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{weights}: tensor {name!r} holds NaN or infinite values; expected finite weights")
        model.load_state_dict(state, assign=True)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()


def _dir_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path {show_value(path)} (a {type(path).__name__}): expected a directory path (a str or os.PathLike)")
    try:
        return Path(path)
    except TypeError as exc:  # an os.PathLike whose __fspath__ returns bytes or nonsense
        raise CheckpointError(f"path {show_value(path)}: expected a directory path ({exc})") from None


def _device(device: object) -> torch.device:
    expected = "cpu, or a cuda device this host has"
    if not isinstance(device, (str, torch.device)):
        raise ConfigError("device", f"is {show_value(device)} (a {type(device).__name__})", expected)
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError("device", f"is {show_value(device)}", expected) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count():
        return device
    raise ConfigError("device", f"is {device}, which this host does not have", expected)


def _read_config(file: Path) -> ModelConfig:
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{file}: is {size} bytes; expected a config.json of at most {MAX_CONFIG_BYTES} bytes")
        text = file.read_bytes()
    except OSError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{file}: cannot read ({exc})") from None
    try:
        return ModelConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigFileError(exc.field, f"{exc.problem} (in {file})", exc.expected) from None


def _check_weights(file: Path, expected: dict[str, torch.Tensor]) -> None:
    """Names, shapes and dtypes of ``file``'s tensors against the model's (from the header)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - whatever safetensors says of a file it cannot read
        raise CheckpointError(f"{file}: not a safetensors file ({exc})") from None
    mismatch = f"{file} does not match config.json"
    missing = [k for k in expected if k not in header]
    if missing:
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise CheckpointError(f"{mismatch}: tensor {missing[0]!r} is missing{more}; expected the tensors of the model config.json describes")
    unexpected = sorted(k for k in header if k not in expected)
    if unexpected:
        more = f" ({len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{mismatch}: tensor {unexpected[0]!r} is not a weight of the model config.json describes{more}")
    for k, want in expected.items():
        if header[k][1] != tuple(want.shape):
            raise CheckpointError(f"{mismatch}: tensor {k!r} has shape {header[k][1]}; expected {tuple(want.shape)}")
    dtypes = sorted({d for d, _ in header.values()})
    bad = [k for k in expected if header[k][0] not in WEIGHT_DTYPES]
    if bad or len(dtypes) > 1:
        k = bad[0] if bad else next(k for k in expected if header[k][0] != header[next(iter(expected))][0])
        raise CheckpointError(
            f"{file}: tensor {k!r} has dtype {header[k][0]} (the file holds {dtypes}); expected one of "
            f"{sorted(WEIGHT_DTYPES)} for every tensor"
        )
