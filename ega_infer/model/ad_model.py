"""The generative ad model: encoder, LazyAR decoder, creative head, reward model, payment
network, saved as ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..exceptions import CheckpointError
from .config import ModelConfig
from .creative import CreativeHead
from .decoder import LazyARDecoder
from .encoder import UserEncoder
from .payment import PaymentNetwork
from .reward import RewardModel

__all__ = ["GenerativeAdModel"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class GenerativeAdModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = UserEncoder(config)
        self.decoder = LazyARDecoder(config)
        self.creative = CreativeHead(config)
        self.reward = RewardModel(config)
        self.payment = PaymentNetwork(config)

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> GenerativeAdModel:
        """Fresh weights, deterministic for ``seed`` (independent of the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(self.config.to_json())
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> GenerativeAdModel:
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise CheckpointError(f"{path}: missing {name} (expected a directory saved by save_pretrained)")
        try:
            config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from exc
        with torch.device("meta"):
            model = cls(config)
        try:
            state = load_file(str(path / WEIGHTS_FILE), device=str(device))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: not a safetensors file ({exc})") from exc
        expected = model.state_dict()
        missing = set(expected) - set(state)
        unexpected = set(state) - set(expected)
        wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{path / WEIGHTS_FILE} does not match config.json: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}, other shapes {sorted(wrong)[:5]}"
            )
        model.load_state_dict(state, assign=True)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()
