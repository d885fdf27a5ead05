"""Cost model and (later) benchmarks."""

from .cost import ForwardCost, cost_summary, forward_cost, image_tokens, predicted_ratio, uniform_cost
from .info import format_report, info_report, parameter_counts

__all__ = [
    "ForwardCost",
    "cost_summary",
    "format_report",
    "forward_cost",
    "image_tokens",
    "info_report",
    "parameter_counts",
    "predicted_ratio",
    "uniform_cost",
]
