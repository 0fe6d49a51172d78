"""Latency measurement and the ``edgecompress bench`` harness."""

from edgecompress.bench.latency import LatencyStats, measure_interleaved


def __getattr__(name):  # the harness imports numpy-heavy helpers: load it on first use
    if name in ("bench", "BenchTable", "SCHEMA", "COLUMNS", "discover", "Artifact"):
        from edgecompress.bench import artifacts, harness

        return getattr(harness, name, None) or getattr(artifacts, name)
    raise AttributeError(name)


__all__ = ["LatencyStats", "measure_interleaved", "bench", "BenchTable", "SCHEMA", "COLUMNS", "discover", "Artifact"]
