"""EGA-V2's comparison table on the synthetic world (``ega-infer eval``): revenue per mille and
CTR under the world's true click model, and Psi, for

* the engine with its payment network;
* the engine's slates priced by GSP, and by VCG, over the beam lists;
* the cascade baseline (popularity retrieval within the user's interests, pCTR x bid ranking,
  GSP), given the engine's ad slots of each request so ad load is the same.

Psi of the engine rows re-runs the list selection on misreports (``incentive_report``); the
engine rows also get Psi and regret / surplus from full re-decodes of every ad in any beam
list (``redecode_rules``) on the first ``redecode_users`` users.
"""

from __future__ import annotations

import numpy as np
import torch

from ..decoding import DecodeConfig
from ..engine import Engine
from ..exceptions import ConfigError
from ..world import AdWorld
from .cascade import cascade_slates
from .incentives import priced_three_ways
from .redecode import redecode_rules
from .quality import judge_slates

__all__ = ["evaluation_table", "format_table"]


def evaluation_table(engine: Engine, world: AdWorld, users: np.ndarray, config: DecodeConfig | None = None,
                     ascent_steps: int = 30, redecode_users: int = 20) -> dict[str, dict[str, float]]:
    """One row per mechanism: ``revenue_per_mille``, ``ctr``, ``ad_share``, ``psi_grid``, ``psi``
    (grid + ascent) and, for the engine rows, ``psi_full`` and ``regret_per_surplus_full``
    (full re-decode) on ``redecode_users``."""
    config = config or engine.default_config
    if config.mode != "lists":
        raise ConfigError("mode", f"is {config.mode!r}", "'lists' (the table compares auctions over beam lists)")
    requests = [world.request(int(u)) for u in users]
    batch = engine.serve_batch(requests, config)
    rows = torch.arange(len(users))
    items = batch.items[rows, batch.winner].cpu().numpy()
    creative_rows = batch.creative_rows[rows, batch.winner].cpu().numpy()
    catalog = engine.catalog
    pois = np.where(items >= 0, np.searchsorted(world.poi_ids, catalog.item_ids[np.maximum(items, 0)]), -1)
    creatives = np.where(creative_rows >= 0,
                         np.searchsorted(world.creative_ids, catalog.creative_ids[np.maximum(creative_rows, 0)]), -1)

    table = {}
    for name, (price, regret) in priced_three_ways(engine, batch, ascent_steps).items():
        label = "engine + payment network" if name == "payment network" else f"engine slates, {name}"
        table[label] = {**judge_slates(world, users, pois, creatives, price.cpu().numpy()),
                        "psi_grid": regret.psi("grid"), "psi": regret.psi("ascent")}
    if redecode_users > 0:
        full = redecode_rules(engine, requests[:redecode_users], config, ("network", "gsp", "vcg"))
        for rule, label in (("network", "engine + payment network"), ("gsp", "engine slates, GSP"),
                            ("vcg", "engine slates, VCG")):
            table[label]["psi_full"] = full[rule].regret.psi("grid")
            table[label]["regret_per_surplus_full"] = full[rule].regret_per_surplus()

    ad_slots = [list(np.flatnonzero((p >= 0) & world.is_ad[np.maximum(p, 0)])) for p in pois]
    cascade = cascade_slates(engine, world, users, ad_slots, config.num_slots, ascent_steps=ascent_steps)
    table["cascade, GSP"] = {**judge_slates(world, users, cascade.pois, cascade.creatives, cascade.payments),
                             "psi_grid": cascade.regret.psi("grid"), "psi": cascade.regret.psi("ascent")}
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = ["mechanism                   RPM      CTR     ad share  Psi (grid)  Psi (grid+ascent)  "
             "Psi (full re-decode)  regret/surplus (full)"]
    for name, row in table.items():
        full = f"{row['psi_full']:<20.4f}" if "psi_full" in row else f"{'-':<20}"
        per = f"{row['regret_per_surplus_full']:.4f}" if "regret_per_surplus_full" in row else "-"
        lines.append(f"{name:<26}  {row['revenue_per_mille']:<7.1f}  {row['ctr']:<6.4f}  {row['ad_share']:<8.3f}  "
                     f"{row['psi_grid']:<10.4f}  {row['psi']:<17.4f}  {full}  {per}")
    return "\n".join(lines)
