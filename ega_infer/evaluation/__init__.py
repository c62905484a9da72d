"""Offline evaluation on the synthetic world: quality against baselines, and the auction's
revenue and incentives (EGA-V2's metrics)."""

from .cascade import CascadeSlates, cascade_slates
from .frontier import format_frontier, frontier, plot_frontier
from .incentives import incentive_report, priced_three_ways
from .quality import interest_hit_rates, judge_slates, slate_metrics
from .redecode import RuleResult, bootstrap_psi, redecode_rules
from .table import evaluation_table, format_table

__all__ = [
    "interest_hit_rates", "judge_slates", "slate_metrics",
    "incentive_report", "priced_three_ways", "redecode_rules", "RuleResult", "bootstrap_psi",
    "frontier", "format_frontier", "plot_frontier",
    "CascadeSlates", "cascade_slates", "evaluation_table", "format_table",
]
