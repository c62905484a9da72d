"""PyTorch modules of the generative ad model; each has a frozen config in ``config``."""

from .ad_model import GenerativeAdModel
from .config import (
    CreativeHeadConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    PaymentConfig,
    RewardConfig,
)
from .creative import CreativeHead
from .decoder import DecoderContext, LazyARDecoder, TailCache
from .encoder import History, UserEncoder
from .payment import PaymentNetwork
from .reward import RewardModel

__all__ = [
    "GenerativeAdModel", "ModelConfig", "EncoderConfig", "DecoderConfig", "CreativeHeadConfig",
    "RewardConfig", "PaymentConfig", "UserEncoder", "History", "LazyARDecoder", "DecoderContext",
    "TailCache", "CreativeHead", "RewardModel", "PaymentNetwork",
]
