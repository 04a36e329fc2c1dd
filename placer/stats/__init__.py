"""Routing statistics: load, co-activation and transitions counted from traces."""

from placer.stats.core import RoutingStats, compute_stats

__all__ = ["RoutingStats", "compute_stats"]
