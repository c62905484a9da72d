"""The revenue-truthfulness frontier (``ega-infer eval --frontier``): every pricing rule on a
grid of token-bid exponents ``alpha``, each under full re-decode (``redecode.py``) on the
given held-out users, plus the maximal-in-range rule (bid-blind lists, alpha 0, VCG) at each
beam width of ``mir_beams`` (a wider bid-blind range earns more).

Rows: ``pricing``, ``alpha``, ``beams``, ``users``, ``revenue_per_mille`` and ``ctr`` (truthful slates
under the world's true click model), ``psi_full`` (with ``psi_full_interval``, bootstrap
5-95%), ``regret_per_surplus_full``, ``max_grid_regret``, ``exactly_truthful`` (true for the
rules whose allocation no bid can move: ``mir``; measured regret is in ``max_grid_regret``)
and ``extra_decode_rows_per_request`` (what serving the rule costs beyond the served decode).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..decoding import DecodeConfig
from ..engine import Engine
from ..world import AdWorld
from .quality import judge_slates
from .redecode import SHARED_RULES, bootstrap_psi, redecode_rules

__all__ = ["frontier", "format_frontier", "plot_frontier"]


def frontier(engine: Engine, world: AdWorld, users: np.ndarray, config: DecodeConfig,
             alphas: tuple[float, ...] = (0.0, 0.6, 1.2), rules: tuple[str, ...] = SHARED_RULES,
             mir_beams: tuple[int, ...] = (16,), chunk: int = 256) -> list[dict]:
    requests = [world.request(int(u)) for u in users]
    catalog = engine.catalog
    runs = [(dataclasses.replace(config, alpha=a, pricing="network"), rules) for a in alphas]
    runs += [(dataclasses.replace(config, alpha=0.0, pricing="mir", beams=(b,)), ("mir",)) for b in mir_beams]
    # serving Clarke decodes one more row per ad slot a winner can hold
    extra = config.num_slots if config.max_ads is None else min(config.max_ads, config.num_slots)
    rows = []
    for cfg, names in runs:
        for name, result in redecode_rules(engine, requests, cfg, names, chunk=chunk).items():
            items, creative_rows = result.items, result.creatives
            pois = np.where(items >= 0, np.searchsorted(world.poi_ids, catalog.item_ids[np.maximum(items, 0)]), -1)
            creatives = np.where(creative_rows >= 0, np.searchsorted(
                world.creative_ids, catalog.creative_ids[np.maximum(creative_rows, 0)]), -1)
            judged = judge_slates(world, users, pois, creatives, result.prices)
            report = result.regret
            grid = report.grid[report.bidders]
            rows.append({
                "pricing": name, "alpha": cfg.alpha, "beams": max(cfg.beams), "users": len(users),
                "revenue_per_mille": judged["revenue_per_mille"], "ctr": judged["ctr"],
                "psi_full": report.psi("grid"), "psi_full_interval": list(bootstrap_psi(report)),
                "regret_per_surplus_full": result.regret_per_surplus(),
                "max_grid_regret": float(grid.max()) if grid.numel() else 0.0,
                "bidders": int(report.bidders.sum()),
                "exactly_truthful": name == "mir",
                "extra_decode_rows_per_request": extra if name == "clarke" else 0,
            })
    return rows


def format_frontier(rows: list[dict]) -> str:
    lines = ["pricing  alpha  beams  RPM      CTR     Psi (full)  Psi 5-95%       regret/surplus  max regret  "
             "extra rows"]
    for r in rows:
        lo, hi = r["psi_full_interval"]
        lines.append(f"{r['pricing']:<7}  {r['alpha']:<5.2f}  {r['beams']:<5}  {r['revenue_per_mille']:<7.1f}  {r['ctr']:<6.4f}  "
                     f"{r['psi_full']:<10.4f}  {lo:.3f}-{hi:<9.3f}  {r['regret_per_surplus_full']:<14.4f}  "
                     f"{r['max_grid_regret']:<10.2e}  {r['extra_decode_rows_per_request']}")
    return "\n".join(lines)


def plot_frontier(rows: list[dict], path: str | Path) -> bool:
    """Revenue per mille against regret / surplus, one marker per (rule, alpha); False when
    matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["pricing"] for r in rows):
        mine = [r for r in rows if r["pricing"] == name]
        ax.plot([r["regret_per_surplus_full"] for r in mine], [r["revenue_per_mille"] for r in mine], "o", label=name)
        for r in mine:
            ax.annotate(f"a={r['alpha']:g}, {r['beams']} beams", (r["regret_per_surplus_full"], r["revenue_per_mille"]), fontsize=7)
    ax.set_xlabel("regret / surplus (full re-decode)")
    ax.set_ylabel("revenue per mille")
    ax.set_title(f"pricing rules on {rows[0]['users']} held-out users" if rows else "pricing rules", fontsize=9)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
