"""Latency: warm-up, then many timed runs of several runtimes interleaved (A B C A B C ...) so
that machine drift hits all of them alike; median, p90, p99, mean."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np


@dataclasses.dataclass
class LatencyStats:
    runtime: str
    threads: int
    batch: int
    iters: int
    ms_median: float
    ms_p90: float
    ms_p99: float
    ms_mean: float
    times: list[float] | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("times")
        return d


def measure_interleaved(
    runners: dict[str, Callable[[], object]], *, threads: int, batch: int = 1, warmup: int = 10, iters: int = 100,
    setups: dict[str, Callable[[], object]] | None = None, keep_times: bool = False,
) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``iters`` times, interleaved, after ``warmup`` rounds.
    ``setups[k]`` (e.g. setting torch's thread count) runs before each call of ``runners[k]``,
    outside the timing."""
    setups = setups or {}
    for _ in range(warmup):
        for k, fn in runners.items():
            if k in setups:
                setups[k]()
            fn()
    times = {k: [] for k in runners}
    for _ in range(iters):
        for k, fn in runners.items():
            if k in setups:
                setups[k]()
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, t in times.items():
        a = np.asarray(t)
        out[k] = LatencyStats(k, threads, batch, iters, float(np.median(a)), float(np.percentile(a, 90)),
                              float(np.percentile(a, 99)), float(a.mean()), t if keep_times else None)
    return out
