"""Latency measurement."""

from edgecompress.bench.latency import LatencyStats, measure_interleaved

__all__ = ["LatencyStats", "measure_interleaved"]
