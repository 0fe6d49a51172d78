"""Latency: warm-up, then many timed runs of several runtimes interleaved (A B C A B C ...) so
that machine drift hits all of them alike; median, p90, p99, mean."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

# Seconds to sleep after a call (outside the timing) before the next runner starts: ncnn's OpenMP
# workers spin for openmp_blocktime (20 ms by default) after a run, libgomp's (torch) briefly;
# onnxruntime sessions are created with allow_spinning=0.
COOLDOWN_S = {"ncnn": 0.022, "torch": 0.002, "onnxruntime": 0.0, "tensorrt": 0.0}


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
    cooldown_s: dict[str, float] | None = None, block: int = 1, rewarm: int = 0,
) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``iters`` times, interleaved, after ``warmup`` calls each.

    Runners take turns in blocks of ``block`` timed calls (A A B B A A B B ... for ``block=2``),
    each block preceded by ``rewarm`` untimed calls, so drift of the machine hits every runner
    alike while each is timed hot, as in an inference loop. ``setups[k]`` (e.g. setting torch's
    thread count) runs before each call of ``runners[k]``, outside the timing. ``cooldown_s[k]``:
    sleep this long after each block of ``runners[k]``, outside the timing, so that a runtime whose
    worker threads keep spinning after a run (ncnn's OpenMP blocktime, 20 ms by default) is idle
    before the next runner starts.
    """
    setups, cooldown_s = setups or {}, cooldown_s or {}

    def call(k, fn) -> float:
        if k in setups:
            setups[k]()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    for k, fn in runners.items():
        for _ in range(warmup):
            call(k, fn)
        if cooldown_s.get(k):
            time.sleep(cooldown_s[k])
    times = {k: [] for k in runners}
    done = 0
    while done < iters:
        n = min(block, iters - done)
        for k, fn in runners.items():
            for _ in range(rewarm):
                call(k, fn)
            times[k] += [call(k, fn) for _ in range(n)]
            if cooldown_s.get(k):
                time.sleep(cooldown_s[k])
        done += n
    out = {}
    for k, t in times.items():
        a = np.asarray(t)
        out[k] = LatencyStats(k, threads, batch, iters, float(np.median(a)), float(np.percentile(a, 90)),
                              float(np.percentile(a, 99)), float(a.mean()), t if keep_times else None)
    return out
