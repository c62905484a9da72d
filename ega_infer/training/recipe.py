"""The recipe that produces the embedded default: the ``tiny`` preset trained on the synthetic
world generated from ``seed``. ``ega-infer train --out DIR`` runs it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..auction.lists import CandidateLists
from ..decoding import DecodeConfig
from ..engine import Engine
from ..evaluation import interest_hit_rates
from ..model import GenerativeAdModel
from ..presets import get_preset
from ..world import AdWorld, WorldConfig
from .batches import HistoryBank, logged_slates
from .generator import train_generator
from .payment import train_payment
from .reward import train_reward

__all__ = ["TrainingConfig", "train_default"]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    seed: int = 0
    slots: int = 6
    generator_steps: int = 600
    generator_batch: int = 64
    reward_steps: int = 1000
    payment_steps: int = 200
    served_users: int = 600


def train_default(out: str | Path, config: TrainingConfig = TrainingConfig(), log: Callable[[str], None] = print) -> dict:
    """Train, evaluate on held-out users, save ``config.json``, ``model.safetensors`` and
    ``training.json`` (seed, settings, timings, metrics) to ``out``; return the metrics."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    preset = get_preset("tiny")
    world = AdWorld(WorldConfig(seed=config.seed), preset.model)
    bank = HistoryBank(world, np.arange(world.config.n_users))
    log(f"world: {world.config.n_pois} POIs, {world.config.n_users} users ({time.perf_counter() - start:.0f} s)")

    model = GenerativeAdModel.from_config(preset.model, seed=config.seed)
    train_generator(model, world, bank, config.slots, config.generator_steps, config.generator_batch, seed=config.seed, log=log)
    engine = Engine(model, "cpu", preset.decode)
    engine.set_catalog(world.catalog())

    rng = np.random.default_rng(config.seed + 1)
    train_users = world.users("train")
    shown = []
    logged_users = rng.choice(train_users, size=min(2000, len(train_users)), replace=False)
    pois, creatives = logged_slates(world, logged_users, config.slots, rng)
    shown.append((logged_users, pois, creatives))
    order = np.argsort(rng.random(pois.shape), axis=1)  # same items, other positions
    shown.append((logged_users, np.take_along_axis(pois, order, 1), np.take_along_axis(creatives, order, 1)))
    served_users = rng.choice(train_users, size=min(config.served_users, len(train_users)), replace=False)
    shown.append(_served(engine, world, served_users, config.slots))
    train_reward(model, world, shown, config.reward_steps, seed=config.seed, log=log)

    # candidate lists as served with the trained reward model choosing among them
    train_payment(model.payment, _served_lists(engine, world, served_users, preset.decode),
                  config.payment_steps, seed=config.seed, log=log)

    metrics = {"interest_hit_rate": interest_hit_rates(engine, world, world.users("test"))}
    elapsed = time.perf_counter() - start
    log(f"held-out interest hit rate: {metrics['interest_hit_rate']}  ({elapsed:.0f} s)")
    out = Path(out)
    model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "command": f"ega-infer train --out {out} --seed {config.seed}",
        "training": asdict(config), "world": asdict(world.config), "seconds": round(elapsed, 1),
        "torch": torch.__version__, "metrics": metrics,
    }, indent=2) + "\n")
    return metrics


def _served(engine: Engine, world: AdWorld, users: np.ndarray, slots: int):
    """Slates the engine serves to ``users`` (lists mode): users, POI rows, creative rows ``[R, K]``."""
    config = DecodeConfig(mode="lists", beams=(8,), num_slots=slots, choose_creatives=True)
    pois = np.zeros((len(users), slots), np.int64)
    creatives = np.full((len(users), slots), -1, np.int64)
    for start in range(0, len(users), 64):
        chunk = users[start : start + 64]
        for i, slate in enumerate(engine.generate([world.request(int(u)) for u in chunk], config)):
            pois[start + i] = engine.catalog.index_of([s.item_id for s in slate.slots])
            ids = [s.creative_id for s in slate.slots]
            creatives[start + i] = [int(np.searchsorted(world.creative_ids, c)) if c is not None else -1 for c in ids]
    return users, pois, creatives


def _served_lists(engine: Engine, world: AdWorld, users: np.ndarray, config: DecodeConfig) -> CandidateLists:
    """The beam lists of ``users``' requests as the payment network prices them."""
    return CandidateLists.cat([engine.serve_batch([world.request(int(u)) for u in users[start : start + 64]], config)
                               for start in range(0, len(users), 64)])
