"""Training of the embedded default on the synthetic world: generator, reward model, payments."""

from .recipe import TrainingConfig, train_default

__all__ = ["TrainingConfig", "train_default"]
