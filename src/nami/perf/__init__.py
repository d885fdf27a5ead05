"""Measurement, the top layer beside the CLI: `nami info` (counts and the FLOP model of `nami.models.cost`),
`nami bench sampling|training` (measured against that model) and FLOP counting."""

from .info import format_report, info_report, parameter_counts

__all__ = ["format_report", "info_report", "parameter_counts"]
